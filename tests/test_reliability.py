"""Bad input gets one line that names the file, row or field and the fix; no run destroys a finished model; remote
code runs only when asked. Each case goes through the recipe entry point users run (`run_recipe`, as
`recipes/<stage>.py` and `hf-gpt <stage>` do)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_gpt import HfGptForCausalLM, HfGptForSequenceClassification
from hf_gpt.data import write_jsonl
from hf_gpt.recipe_utils import run_recipe
from hf_gpt.tokenizer import special_token_ids

PAIRS = [{"prompt": f"Question {i}?", "chosen": f"Good {i}.", "rejected": f"Bad {i}"} for i in range(8)]
ROWS = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(8)]


def error_line(stage: str, argv: list[str], capsys) -> str:
    """Run a recipe that must fail on bad input; returns its one line (the process's exit message)."""
    with pytest.raises(SystemExit) as stop:
        run_recipe(stage, argv)
    message = stop.value.code if isinstance(stop.value.code, str) else capsys.readouterr().err.strip()
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer, tiny_config):
    """A saved SFT-like causal LM, a reward model with a trained (saved) score head, and data files."""
    root = tmp_path_factory.mktemp("reliability")
    torch.manual_seed(0)
    config = dict(vocab_size=len(tokenizer), max_position_embeddings=96, **special_token_ids(tokenizer))
    HfGptForCausalLM(tiny_config(**config)).save_pretrained(root / "sft")
    HfGptForSequenceClassification(tiny_config(num_labels=1, **config)).save_pretrained(root / "rm")
    HfGptForCausalLM(tiny_config(**{**config, "vocab_size": 300})).save_pretrained(root / "small_vocab")
    for name in ("sft", "rm", "small_vocab"):
        tokenizer.save_pretrained(root / name)
    (root / "empty").mkdir()
    (root / "truncated").mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (root / "sft" / name).exists():
            (root / "truncated" / name).write_bytes((root / "sft" / name).read_bytes())
    weights = (root / "sft" / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    write_jsonl(root / "rows.jsonl", ROWS)
    write_jsonl(root / "pairs.jsonl", PAIRS)
    (root / "rows.csv").write_text("prompt,completion\nQ?,A.\n")
    (root / "broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n'
                                       '{"prompt": "e", "completion": \n')
    write_jsonl(root / "no_prompt.jsonl", [{"question": "Hi?"}] * 8)
    write_jsonl(root / "bad_role.jsonl", [{"prompt": [{"role": "robot", "content": "Hi?"}]}] * 8)
    (root / "text.txt").write_text("The capital of Korea is Seoul. " * 300)
    return root


def sft_argv(root: Path, tmp_path: Path, **overrides) -> list[str]:
    fields = {"model_name_or_path": root / "sft", "data_files": root / "rows.jsonl", "output_dir": tmp_path / "out",
              "max_steps": 1, "save_strategy": "no", **overrides}
    return [x for k, v in fields.items() for x in (f"--{k}", str(v))]


def ppo_argv(root: Path, tmp_path: Path, **overrides) -> list[str]:
    return sft_argv(root, tmp_path, **{"data_files": root / "pairs.jsonl", "reward_model_path": root / "rm",
                                       "response_length": 4, "per_device_train_batch_size": 4, **overrides})


@pytest.mark.parametrize("stage, overrides, expected", [
    ("sft", {"data_files": "broken.jsonl"}, r"broken.jsonl line 3 is not valid JSON .*: fix or remove that line"),
    ("sft", {"data_files": "rows.csv"}, None),  # one csv alone is fine (checked below: mixed types are not)
    ("sft", {"model_name_or_path": "./no/such/folder"}, r"./no/such/folder is not a model folder"),
    ("sft", {"model_name_or_path": "empty"}, r"empty has no config.json: it is not a saved model folder"),
    ("sft", {"model_name_or_path": "truncated"}, r"Cannot load the model from .*truncated: "),
    ("sft", {"model_name_or_path": "small_vocab"}, r"has 600 tokens but the model's vocab_size is 300"),
    ("reward", {"model_name_or_path": "small_vocab", "data_files": "pairs.jsonl"}, r"vocab_size is 300"),
    ("ppo", {"reward_model_path": "sft"}, r"sft has no trained score head .* give a reward model folder"),
    ("ppo", {"data_files": "no_prompt.jsonl"}, r"columns \['question'\], no 'prompt': set --prompt_column"),
    ("ppo", {"data_files": "bad_role.jsonl"}, r"Prompt row 0: A prompt has a turn with role 'robot'"),
    ("sft", {"max_steps": -5}, r"max_steps must be a positive number of steps, or -1"),
])
def test_bad_input_is_one_line(folders, tmp_path, capsys, stage, overrides, expected):
    resolve = lambda v: str(folders / v) if isinstance(v, str) and (folders / v).exists() else v
    overrides = {k: resolve(v) for k, v in overrides.items()}
    argv = (ppo_argv if stage == "ppo" else sft_argv)(folders, tmp_path, **overrides)
    if expected is None:
        run_recipe(stage, argv)
        return
    import re

    assert re.search(expected, error_line(stage, argv, capsys))


def test_mixed_file_types_and_broken_pretraining_jsonl(folders, tmp_path, capsys):
    argv = sft_argv(folders, tmp_path) + ["--data_files", str(folders / "rows.jsonl"), str(folders / "rows.csv")]
    assert "data_files mixes file types (.csv, .jsonl)" in error_line("sft", argv, capsys)
    line = error_line("pretrain", ["--config", "tiny", "--data_files", str(folders / "broken.jsonl"),
                                   "--output_dir", str(tmp_path / "p")], capsys)
    assert line.endswith("broken.jsonl line 3 is not valid JSON (Expecting value, column 30): fix or remove that line.")


@pytest.mark.parametrize("flag, expected", [
    (["--max_steps", "abc"], "error: argument --max_steps/--max-steps: invalid int value: 'abc' (--help lists every "
                             "option)"),
    (["--learning_rat", "0.1"], "error: unknown option --learning_rat: check its spelling (--help lists every option)"),
])
def test_usage_errors_are_one_line_without_the_usage(folders, tmp_path, capsys, flag, expected):
    with pytest.raises(SystemExit) as stop:
        run_recipe("sft", sft_argv(folders, tmp_path) + flag)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == expected


# ------------------------------------------------------------------ nothing finished is lost


def pretrain_argv(folders: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", "tiny", "--data_files", str(folders / "text.txt"), "--output_dir", str(out), "--max_steps",
            "4", "--save_steps", "2", "--eval_steps", "2", "--disable_tqdm", "true", *extra]


def hashes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_rerun_into_a_finished_folder_changes_nothing(folders, tmp_path, capsys):
    out = tmp_path / "model"
    run_recipe("pretrain", pretrain_argv(folders, out))
    before = hashes(out)
    line = error_line("pretrain", pretrain_argv(folders, out), capsys)
    assert line == (f"error: {out} holds a finished pretraining model: pass --overwrite_output_dir true to train "
                    "again into it, --resume_from_checkpoint <checkpoint> to continue from one, or another "
                    "--output_dir.")
    assert hashes(out) == before  # byte-identical
    run_recipe("pretrain", pretrain_argv(folders, out, "--overwrite_output_dir", "true", "--max_steps", "2"))
    assert json.loads((out / "training_summary.json").read_text())["steps"] == 2  # told to: trained afresh


def test_resume_skips_a_partial_checkpoint_and_refuses_another_run(folders, tmp_path, capsys, caplog):
    out = tmp_path / "model"
    run_recipe("pretrain", pretrain_argv(folders, out))
    # As if killed while saving checkpoint-4: its state file missing, the final model not written yet.
    (out / "checkpoint-4" / "trainer_state.json").unlink()
    (out / "training_summary.json").unlink()
    other = tmp_path / "other.txt"
    other.write_text("Other text entirely. " * 300)
    line = error_line("pretrain", pretrain_argv(folders, out, "--data_files", str(other)), capsys)
    assert line.startswith(f"error: {out} holds checkpoints of another run (data_files: [")
    with caplog.at_level("WARNING"):
        run_recipe("pretrain", pretrain_argv(folders, out))
    assert "Skipping" in caplog.text and "checkpoint-4" in caplog.text and "Resuming" in caplog.text
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and (out / "training_summary.json").exists()


# ------------------------------------------------------------------ remote code only when asked


def test_hostile_folder_runs_no_code_without_the_flag(tmp_path, saved_model):
    evil = tmp_path / "evil"
    evil.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):  # a tokenizer that loads
        if (saved_model / name).exists():
            (evil / name).write_bytes((saved_model / name).read_bytes())
    marker = tmp_path / "pwned"
    (evil / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {
        "AutoConfig": "evil_code.EvilConfig", "AutoModelForCausalLM": "evil_code.EvilModel"}}))
    (evil / "evil_code.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    result = subprocess.run([sys.executable, "-m", "hf_gpt.cli", "generate", str(evil), "x"], capture_output=True,
                            text=True, timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1 and not marker.exists()
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"hf-gpt: error: Cannot load the model from {evil}: it holds its own modelling code, which runs "
                    "only with --trust-remote-code (trust_remote_code=True): read that code first")
