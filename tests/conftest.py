import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs in pytest-xdist workers, one per core: each worker (and every process it starts, through
# OMP_NUM_THREADS) gets an equal share of the cores instead of all of them fighting over every core.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from hf_gpt import HfGptConfig, HfGptForCausalLM  # noqa: E402
from hf_gpt.tokenizer import special_token_ids, train_tokenizer  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _shared_data(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is absent: the real data sets live in ../shared/data beside the repository.")
    return path


def _tiny_config(**overrides) -> HfGptConfig:
    kwargs = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    kwargs.update(overrides)
    return HfGptConfig(**kwargs)


def _tiny_model(**overrides) -> HfGptForCausalLM:
    torch.manual_seed(0)
    return HfGptForCausalLM(_tiny_config(**overrides)).eval()


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of the session's CI-scale demo run lands in one xdist worker (`--dist loadgroup`), which trains it
    once; the other tests spread over the other workers."""
    for item in items:
        if "demo_run" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("demo"))


@pytest.fixture()
def one_line(capsys):
    """`one_line(stage, argv)`: run a recipe that must stop (as `recipes/<stage>.py` would) and return the one line it
    ended with, checked to be one line and no traceback."""
    from hf_gpt.recipe_utils import run_recipe

    def run(stage: str, argv: list[str]) -> str:
        with pytest.raises(SystemExit) as stop:
            run_recipe(stage, argv)
        message = stop.value.code if isinstance(stop.value.code, str) else capsys.readouterr().err.strip()
        assert "\n" not in message.strip() and "Traceback" not in message, message
        return message

    return run


@pytest.fixture(scope="session")
def shared_data():
    """`shared_data("dir/file")`: a file under ../shared/data, or the test is skipped with the reason."""
    return _shared_data


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(**overrides)`: a 2-layer, 32-wide HfGptConfig."""
    return _tiny_config


@pytest.fixture(scope="session")
def model_folder():
    """`model_folder(tmp_path, tokenizer, name, **overrides)`: a seeded, untrained tiny model (width 64, 96 positions)
    sized to `tokenizer`, saved with it in tmp_path/name: a base model to fine-tune in a test."""
    def make(tmp_path: Path, tokenizer, name: str = "base", **overrides) -> Path:
        folder = tmp_path / name
        torch.manual_seed(0)
        HfGptForCausalLM(_tiny_config(vocab_size=len(tokenizer), max_position_embeddings=96, hidden_size=64,
                                      **special_token_ids(tokenizer), **overrides)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    return make


@pytest.fixture(scope="session")
def tiny_model():
    """`tiny_model(**overrides)`: a seeded tiny HfGptForCausalLM in eval mode."""
    return _tiny_model


@pytest.fixture(scope="session")
def tokenizer():
    from pydoc_data.topics import topics

    return train_tokenizer(iter(topics.values()), vocab_size=600)


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, tokenizer):
    """A tiny model + tokenizer saved as a folder, as users get it from training."""
    folder = tmp_path_factory.mktemp("tiny-hf-gpt")
    torch.manual_seed(0)
    model = HfGptForCausalLM(_tiny_config(vocab_size=len(tokenizer), **special_token_ids(tokenizer)))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def serve():
    """`serve(folder)` starts `hf-gpt serve` on a free loopback port (pinned to `folder`, or serving any model when
    it is None) and returns its OpenAI base URL; `stdin` is written to the server's standard input, its standard error
    kept in `serve.stderr` (a file). Every server started is stopped after the test."""
    servers = []

    def start(folder: Path | None, *extra: str, stdin: str | None = None) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        start.stderr = tempfile.TemporaryFile("w+")
        server = subprocess.Popen([sys.executable, "-m", "hf_gpt.cli", "serve", *([str(folder)] if folder else []),
                                   "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", *extra],
                                  stdin=subprocess.PIPE if stdin else None, stdout=subprocess.DEVNULL,
                                  stderr=start.stderr, text=True)
        if stdin:
            server.stdin.write(stdin)
            server.stdin.flush()
        servers.append(server)
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                return f"http://127.0.0.1:{port}/v1"
            except OSError:
                assert server.poll() is None, "the server exited"
                time.sleep(0.5)
        raise TimeoutError("hf-gpt serve did not answer /health in 120 s")

    yield start
    for server in servers:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The whole pipeline on the world at CI scale (`--scale tiny`, under 3 minutes alone), once per session:
    (its folder, its metrics)."""
    from hf_gpt.demo import SCALES, Pipeline

    out = tmp_path_factory.mktemp("demo")
    return out, Pipeline(out, "world", SCALES["tiny"], fresh=False).run()
