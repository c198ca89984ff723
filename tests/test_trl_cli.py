"""TRL's own command line trains hf-gpt folders on the demo's data as written: `trl sft`, `trl dpo` and `trl reward`
(the commands README shows), run as a user would, with the folder's remote code and the flags a CPU needs."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

TRL = str(Path(sys.executable).parent / "trl")
# --max_length: TRL's default (1024) is longer than a small model's context; --bf16 false: CPUs train in float32.
CPU_FLAGS = ["--bf16", "false", "--max_length", "96", "--report_to", "none", "--save_strategy", "no",
             "--per_device_train_batch_size", "4", "--max_steps", "3", "--trust_remote_code"]


@pytest.fixture(scope="module")
def world_data(tmp_path_factory) -> Path:
    """The data folders `make demo` writes (runs/world/data), at CI scale."""
    from hf_gpt.demo import SCALES, world_data

    root = tmp_path_factory.mktemp("trl-data")
    world_data(root, SCALES["tiny"])
    return root


def trl(command: str, folder: Path, data: Path, out: Path, *extra: str) -> Path:
    done = subprocess.run([TRL, command, "--model_name_or_path", str(folder), "--dataset_name", str(data),
                           "--output_dir", str(out), *CPU_FLAGS, *extra], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def changed(before: Path, after: Path) -> bool:
    old, new = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    return any(not torch.equal(old[k], new[k]) for k in old.keys() & new.keys())


def test_trl_sft_and_dpo_train_a_folder_on_the_demos_data(model_folder, tokenizer, tmp_path, world_data):
    from transformers import AutoModelForCausalLM

    from hf_gpt.loading import load_model_and_tokenizer

    base = model_folder(tmp_path, tokenizer)
    sft = trl("sft", base, world_data / "sft", tmp_path / "sft", "--assistant_only_loss", "true")
    dpo = trl("dpo", sft, world_data / "preferences", tmp_path / "dpo")
    assert changed(base, sft) and changed(sft, dpo)
    for folder in (sft, dpo):  # back in hf-gpt: the one loader reads what TRL wrote
        _, model = load_model_and_tokenizer(AutoModelForCausalLM, folder)
        assert model.config.model_type == "hf_gpt"


def test_trl_reward_trains_a_score_head_on_the_demos_pairs(model_folder, tokenizer, tmp_path, world_data):
    from hf_gpt.loading import load_score_model

    rm = trl("reward", model_folder(tmp_path, tokenizer), world_data / "preferences", tmp_path / "rm")
    model = load_score_model(str(rm), "reward model")
    assert model.score.weight.shape == (1, model.config.hidden_size)
