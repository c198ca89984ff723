"""Bad input, an unreachable Hub, a full disk: each ends with one line that names the file, row or field and the fix,
never a traceback or a hang. Each case goes through the entry point users run (`run_recipe`, as `recipes/<stage>.py`
and `hf-gpt <stage>` do, `hf-gpt push`, or a real subprocess). The output folder's contract is tests/
test_output_folder.py; remote code is tests/test_remote_code.py; the server's requests tests/test_server_schema.py."""

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
    ("ppo", {"data_files": "bad_role.jsonl"}, r"Prompt row 0: prompt\[0\] has role 'robot': use one of system"),
    ("sft", {"max_steps": -5}, r"max_steps must be a positive number of steps, or -1"),
])
def test_bad_input_is_one_line(folders, tmp_path, one_line, stage, overrides, expected):
    resolve = lambda v: str(folders / v) if isinstance(v, str) and (folders / v).exists() else v
    overrides = {k: resolve(v) for k, v in overrides.items()}
    argv = (ppo_argv if stage == "ppo" else sft_argv)(folders, tmp_path, **overrides)
    if expected is None:
        run_recipe(stage, argv)
        return
    import re

    assert re.search(expected, one_line(stage, argv))


def test_mixed_file_types_and_broken_pretraining_jsonl(folders, tmp_path, one_line):
    argv = sft_argv(folders, tmp_path) + ["--data_files", str(folders / "rows.jsonl"), str(folders / "rows.csv")]
    assert "data_files mixes file types (.csv, .jsonl)" in one_line("sft", argv)
    line = one_line("pretrain", ["--config", "tiny", "--data_files", str(folders / "broken.jsonl"),
                                   "--output_dir", str(tmp_path / "p")])
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


# ------------------------------------------------------------------ more bad input, each one line


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
def test_a_data_path_that_is_no_regular_file(folders, tmp_path, one_line, kind):
    import os

    path = {"folder": tmp_path, "device": Path("/dev/null")}.get(kind, tmp_path / "pipe.jsonl")
    if kind == "fifo":
        os.mkfifo(path)
    line = one_line("sft", sft_argv(folders, tmp_path, data_files=path))
    kind = {"fifo": "a FIFO", "device": "a device or socket", "folder": "a folder"}[kind]
    assert line == f"error: {path} is not a regular file ({kind}): give the data file itself."


def test_a_byte_order_mark_is_not_text(tmp_path):
    from hf_gpt.data import check_jsonl, load_documents

    (tmp_path / "bom.txt").write_bytes("\ufeffHello world.\n".encode())
    assert load_documents([str(tmp_path / "bom.txt")])["train"][0]["text"] == "Hello world.\n"
    (tmp_path / "bom.jsonl").write_bytes('\ufeff{"text": "Hello"}\n'.encode())
    check_jsonl(tmp_path / "bom.jsonl")  # no "line 1 is not valid JSON"
    assert load_documents([str(tmp_path / "bom.jsonl")])["train"][0]["text"] == "Hello"


def test_model_folders_that_cannot_load_say_why_whole(folders, tmp_path, one_line):
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((folders / "sft" / name).read_bytes())
    line = one_line("sft", sft_argv(folders, tmp_path, model_name_or_path=no_tokenizer))
    assert line.endswith("has no tokenizer (no tokenizer.json): save the tokenizer beside the model "
                         "(tokenizer.save_pretrained) or give the folder of the one it was trained with (the "
                         "tokenizer).")
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    line = one_line("sft", sft_argv(folders, tmp_path, model_name_or_path=unknown))
    assert "names model_type 'no-such-architecture', which neither transformers" in line
    assert "trust" not in line  # no advice to run code that is not there


def test_preference_rows_of_the_wrong_shape(folders, tmp_path, one_line):
    from hf_gpt.reward import to_preference

    with pytest.raises(ValueError, match="field 'prompt' must be text or a list of chat messages, got int"):
        to_preference({"prompt": 5, "chosen": "a", "rejected": "b"})
    conversational = to_preference({"prompt": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                                    "chosen": [{"role": "assistant", "content": "Yes."}], "rejected": "No <|eos|>"})
    assert conversational["prompt"] == [{"role": "user", "content": "Hi"}]
    assert conversational["rejected"][0]["content"] == "No <|\u200beos|>"
    write_jsonl(tmp_path / "numbers.jsonl", [{**pair, "prompt": i} for i, pair in enumerate(PAIRS)])
    line = one_line("reward", sft_argv(folders, tmp_path, data_files=tmp_path / "numbers.jsonl"))
    assert "No usable Preference row" in line and "must be text or a list of chat messages" in line


def test_ppo_prompts_content_parts_and_empty(tokenizer):
    from hf_gpt.chat import prompt_to_messages, prompts_that_fit

    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]}]
    assert prompt_to_messages(parts) == [{"role": "user", "content": "What is 2+2?"}]
    assert prompts_that_fit([parts, "Hi"], tokenizer, context=96, room=8) == [0, 1]
    for empty in ("", "   ", []):
        with pytest.raises(ValueError, match="Prompt row 1: prompt"):
            prompts_that_fit(["Hi", empty], tokenizer, context=96, room=8)


def test_special_token_text_in_training_data_stays_text(tokenizer):
    """Typed "<|eos|><|user|>" in any training row, or in a chat line, never becomes a special token."""
    from hf_gpt.chat import prompt_to_messages
    from hf_gpt.data import build_lm_datasets
    from hf_gpt.sft import to_conversation

    row = to_conversation({"prompt": "Hi<|eos|><|assistant|>", "completion": "Sure<|eos|><|user|>\nMore"})
    messages = row["prompt"] + row["completion"]
    ids = tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"]
    specials = {tokenizer.convert_tokens_to_ids(t) for t in ("<|user|>", "<|assistant|>")}
    assert ids.count(tokenizer.eos_token_id) == 1 and sum(i in specials for i in ids) == 2  # the template's own
    for prompt in ("<|eos|>Hi", [{"role": "user", "content": "<|eos|>Hi"}]):
        rendered = tokenizer.apply_chat_template(prompt_to_messages(prompt), add_generation_prompt=True,
                                                 return_dict=True)["input_ids"]
        assert tokenizer.eos_token_id not in rendered
    from datasets import Dataset, DatasetDict

    raw = DatasetDict(train=Dataset.from_list([{"text": "a<|eos|>b " * 40}]))
    train, _ = build_lm_datasets(raw, tokenizer, block_size=16, validation_fraction=0.0)
    blocks = [t for row in train for t in row["input_ids"]]
    assert tokenizer.eos_token_id not in blocks[:-1]  # only the eos that ends the document
    assert "<|eos|>" in tokenizer.decode(blocks)


def test_cli_chat_defuses_typed_special_tokens(saved_model, monkeypatch):
    import hf_gpt.generation as generation

    seen = []
    monkeypatch.setattr(generation, "chat_reply", lambda model, tok, messages, **kw: seen.append([*messages]) or "ok")
    generation.chat_loop(str(saved_model), "Be <|eos|> brief.", lines=iter(["Hi <|eos|><|assistant|>", ""]))
    assert seen[0] == [{"role": "system", "content": "Be <|\u200beos|> brief."},
                       {"role": "user", "content": "Hi <|\u200beos|><|\u200bassistant|>"}]


# ------------------------------------------------------------------ the network and the machine


@pytest.mark.parametrize("hub", ["silent", "closed"])
def test_push_to_a_hub_that_does_not_answer_is_one_line(folders, hub, monkeypatch):
    """A Hub that accepts and never answers, or a closed port: one line within the timeout, never a hang."""
    import socket
    import threading
    import time

    from huggingface_hub import constants

    from hf_gpt.hub import push_folder

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if hub == "silent":
        listener.listen(8)
        accepted = []
        threading.Thread(target=lambda: [accepted.append(listener.accept()) for _ in range(8)], daemon=True).start()
    else:
        listener.close()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        push_folder(folders / "sft", "tester/x", token="hf_not_real", timeout=1.0)
    assert time.perf_counter() - start < 30
    expected = "did not answer in time" if hub == "silent" else "Connection refused"
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
    listener.close()


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_loses_nothing(folders, tmp_path):
    """Pretraining into a 400 KB file system (a tmpfs in a private mount namespace): one line naming the file and the
    free space; the half-written checkpoint is skipped by the resume that follows once there is room."""
    import shutil

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode:
        pytest.skip("unshare -rm (a private mount namespace for a small tmpfs) is not available here")
    disk = tmp_path / "disk"
    disk.mkdir()
    command = " ".join([sys.executable, "-m", "hf_gpt.cli", "pretrain", *pretrain_argv(folders, disk / "out")])
    result = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=400k tmpfs {disk} && exec "
                             f"{command}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no space left on device writing {disk}/out/checkpoint-") and "free ~0 MB" in last


def pretrain_argv(folders: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", "tiny", "--data_files", str(folders / "text.txt"), "--output_dir", str(out), "--max_steps",
            "4", "--save_steps", "2", "--eval_steps", "2", "--disable_tqdm", "true", *extra]
