"""Every command in README.md and README.ko.md runs as written, at micro scale: only size overrides (`--max_steps`, row
and batch counts) are added, in a sandbox laid out as the repository (recipes/, runs/, ../shared/data)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
pytestmark = pytest.mark.slow
# Commands not run here, and why.
NOT_RUN = {
    "make demo": "the demo itself (tests/test_demo.py runs its pipeline)",
    "make test": "the test suite itself",
    "transformers chat": "an interactive client of the server that `hf-gpt serve` starts (served here)",
    "multi_gpu.yaml": "needs several GPUs",
    "fsdp.yaml": "needs GPUs (tests/test_distributed.py runs it on two CPU processes with HF_GPT_FSDP_ON_CPU=1)",
    "multi_node.yaml": "needs two hosts (tests/test_distributed.py runs two on 127.0.0.1)",
    "gpt2-small": "downloads its corpus from the Hub (no network here)",
    "korean-gpu": "downloads its corpus from the Hub (no network here)",
    "bench/gpu_bench.py": "needs a CUDA GPU (tests/test_benches.py runs it tiny on the CPU in bench/gpu_check.sh)",
    "make demo DATA=": "downloads its three data sets from the Hub (no network here)",
    "make demo-transformers": "the demo itself (tests/test_encoders_training.py runs its pipeline)",
    "runs/korean/base": "reads the Korean demo's model (make demo DATA=korean); tests/test_eval_harness.py runs "
                        "both tasks on a tiny model",
    "hellaswag": "downloads its data from the Hub (no network here; tests/test_eval_harness.py checks the line)",
    "llama-cli": "llama.cpp's own program (bench/gguf_check.sh runs the file with llama.cpp's library)",
    "llama-server": "llama.cpp's own program (bench/gguf_check.sh runs the file with llama.cpp's library)",
}
BATCH = ["--per_device_train_batch_size", "2"]  # a preset's first steps at its full batch cost 3-8 s more each
MICRO = {  # stage → the overrides that shrink a run
    "pretrain": ["--max_steps", "2", "--eval_steps", "2", "--save_steps", "2", *BATCH],
    "sft": ["--max_steps", "2", "--eval_steps", "2", "--save_steps", "2", "--max_rows", "32", *BATCH],
    "reward": ["--max_steps", "2", "--eval_steps", "2", "--save_steps", "2", "--max_rows", "32", *BATCH],
    "ppo": ["--max_steps", "1", "--max_rows", "16", "--per_device_train_batch_size", "4", "--response_length", "4"],
    "grpo": ["--max_steps", "1", "--max_rows", "8", "--per_device_train_batch_size", "4",  # 4 generations a prompt
             "--max_completion_length", "8"],
    "rloo": ["--max_steps", "1", "--max_rows", "8"],
    "dpo": ["--max_steps", "1", "--max_rows", "8", *BATCH],
    "mlm": ["--max_steps", "2", "--eval_steps", "2", "--save_steps", "2", *BATCH],
    "classify": ["--max_steps", "2", *BATCH], "translate": ["--max_steps", "2", *BATCH],
    "trl": ["--max_steps", "2"],  # TRL's own command line
}


def readme_commands() -> list[str]:
    """The shell lines of the bash blocks of both READMEs, comments stripped, in order, without repeats."""
    commands = []
    for readme in ("README.md", "README.ko.md"):
        text = (ROOT / readme).read_text(encoding="utf-8")
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            block = re.sub(r"\\\n\s*", "", block)  # a command continued with \ is one command
            for line in block.splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                if line and not line.startswith("#") and line not in commands:
                    commands.append(line)
    return commands


def test_the_readmes_have_commands():
    commands = readme_commands()
    assert any(c.startswith("python recipes/pretrain.py") for c in commands)
    assert not [c for c in commands if "..." in c]  # every command complete, as users copy it


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """repo/ (recipes → the real ones) beside shared/ (→ the real ../shared)."""
    top = tmp_path_factory.mktemp("readme")
    repo = top / "repo"
    repo.mkdir()
    (repo / "recipes").symlink_to(ROOT / "recipes")
    if SHARED.is_dir():
        (top / "shared").symlink_to(SHARED)
    (repo / "corpus.txt").write_text("The capital of Korea is Seoul. 대한민국의 수도는 서울입니다.\n" * 200)
    return repo


@pytest.fixture(scope="module")
def world_run(sandbox, demo_run) -> Path:
    """runs/world in the sandbox: a copy of the session's CI-scale demo run, which the README's commands only read."""
    shutil.copytree(demo_run[0], sandbox / "runs" / "world", ignore=shutil.ignore_patterns("checkpoint-*"))
    return sandbox / "runs" / "world"


def shell(command: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(shlex.split(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          **kwargs)


def stage_of(command: str) -> str | None:
    if command.startswith("trl "):
        return "trl"
    match = re.search(r"recipes/(\w+)\.py", command)
    return match.group(1) if match else None


# Commands that read another command's run folder (by their presets' output_dir) share a pytest-xdist group, so that
# they run in one worker, in README order; those reading runs/world join the demo's group, which trains it once.
CHAINS = {"demo": ("runs/world",), "readme-english": ("tinystories", "self_instruct", "hh_rlhf"),
          "readme-nsmc": ("nsmc",)}


def grouped(commands: list[str]) -> list:
    params = []
    for command in commands:
        group = next((name for name, keys in CHAINS.items() if any(key in command for key in keys)), None)
        params.append(pytest.param(command, marks=[pytest.mark.xdist_group(group)] if group else []))
    return params


@pytest.mark.parametrize("command", grouped(readme_commands()))
def test_readme_command_runs_as_written(command, sandbox, request):
    reason = next((why for key, why in NOT_RUN.items() if command.startswith(key) or key in command), None)
    if reason:
        pytest.skip(reason)
    if "--config" in command and not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the presets read the real data sets there")
    if "runs/world" in command:
        request.getfixturevalue("world_run")
    if command.startswith("hf-gpt serve"):
        return serve_and_stop(command, sandbox)
    micro = MICRO.get(stage_of(command), [])
    result = shell(command + " " + " ".join(micro), sandbox, input="\n" if " chat " in command else None)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"


def serve_and_stop(command: str, cwd: Path) -> None:
    port = re.search(r"--port (\d+)", command).group(1)
    server = subprocess.Popen(shlex.split(command.replace("hf-gpt", f"{sys.executable} -m hf_gpt.cli", 1)),
                              cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                return
            except OSError:
                assert server.poll() is None, "the server exited"
                time.sleep(0.5)
        raise AssertionError("no answer on /health")
    finally:
        server.terminate()
        server.wait(timeout=30)
