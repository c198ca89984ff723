import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from hf_gpt import HfGptConfig, HfGptForCausalLM  # noqa: E402
from hf_gpt.tokenizer import special_token_ids, train_tokenizer  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(relative: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is absent: the real data sets live in ../shared/data beside the repository.")
    return path


def tiny_config(**overrides) -> HfGptConfig:
    kwargs = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    kwargs.update(overrides)
    return HfGptConfig(**kwargs)


def tiny_model(**overrides) -> HfGptForCausalLM:
    torch.manual_seed(0)
    return HfGptForCausalLM(tiny_config(**overrides)).eval()


@pytest.fixture(scope="session")
def tokenizer():
    from pydoc_data.topics import topics

    return train_tokenizer(iter(topics.values()), vocab_size=600)


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, tokenizer):
    """A tiny model + tokenizer saved as a folder, as users get it from training."""
    folder = tmp_path_factory.mktemp("tiny-hf-gpt")
    torch.manual_seed(0)
    model = HfGptForCausalLM(tiny_config(vocab_size=len(tokenizer), **special_token_ids(tokenizer)))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
