"""Remote code: a saved folder loads where hf_gpt is not installed, through trust_remote_code (as from the Hub); and
a folder's own code runs only when asked, at every entry point (the one loader, hf_gpt.loading)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hf_gpt import HfGptForCausalLM

SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["hf_gpt"] = None  # any `import hf_gpt` now fails, installed or not: only the folder's code may run
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    folder = sys.argv[1]
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = tok("The assert statement", return_tensors="pt").input_ids
    out = lm.generate(ids, max_new_tokens=8, do_sample=False)
    with torch.no_grad():
        logits = lm(ids).logits
    rm = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True, num_labels=1).eval()
    with torch.no_grad():
        score = rm(ids).logits
    print(json.dumps({"lm": type(lm).__name__, "rm": type(rm).__name__, "module": type(lm).__module__,
                      "generated": out[0].tolist(), "logits_sum": logits.sum().item(),
                      "score_shape": list(score.shape)}))
""")


def test_load_with_trust_remote_code_without_hf_gpt(saved_model, tmp_path, tokenizer):
    env = {**os.environ, "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(saved_model)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["lm"] == "HfGptForCausalLM" and report["rm"] == "HfGptForSequenceClassification"
    assert report["module"].startswith("transformers_modules")  # the copied code, not an installed package
    model = HfGptForCausalLM.from_pretrained(saved_model).eval()
    ids = tokenizer("The assert statement", return_tensors="pt").input_ids
    expected = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert report["generated"] == expected[0].tolist()
    with torch.no_grad():
        assert abs(report["logits_sum"] - model(ids).logits.sum().item()) < 1e-3
    assert report["score_shape"] == [1, 1]


# ------------------------------------------------------------------ remote code only when asked, at every entry point

EVIL = "open({marker!r}, 'a').write('ran ' + __name__ + '\\n')\nclass EvilConfig: pass\nclass EvilModel: pass\n"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, saved_model):
    """Two folders whose code writes a marker file when imported: a model (config.json + tokenizer_config.json name
    their own classes) and a tokenizer alone. Plus data for every stage."""
    root = tmp_path_factory.mktemp("hostile")
    marker = root / "pwned"
    for name, has_config in (("evil_model", True), ("evil_tokenizer", False)):
        folder = root / name
        folder.mkdir()
        for file in ("tokenizer.json", "chat_template.jinja"):
            if (saved_model / file).exists():
                (folder / file).write_bytes((saved_model / file).read_bytes())
        tokenizer_config = json.loads((saved_model / "tokenizer_config.json").read_text())
        tokenizer_config.update(tokenizer_class="EvilTokenizer",
                                auto_map={"AutoTokenizer": ["evil_code.EvilTokenizer", None]})
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
        if has_config:
            auto_map = {"AutoConfig": "evil_code.EvilConfig", "AutoModelForCausalLM": "evil_code.EvilModel"}
            (folder / "config.json").write_text(json.dumps({"model_type": "evil", "architectures": ["EvilModel"],
                                                            "auto_map": auto_map}))
        (folder / "evil_code.py").write_text(EVIL.format(marker=str(marker)))
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}.", "chosen": "Yes.", "rejected": "No",
             "text": f"Some text {i}.", "label": i % 2} for i in range(8)]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "text.txt").write_text("Plain text for pretraining. " * 200)
    return root, marker


def stage_argv(root: Path, stage: str, saved_model: Path, tmp_path: Path) -> list[str]:
    evil, rows, out = str(root / "evil_model"), str(root / "rows.jsonl"), str(tmp_path / stage)
    common = ["--output_dir", out, "--max_steps", "1"]
    return {
        "sft": ["--model_name_or_path", evil, "--data_files", rows],
        "reward": ["--model_name_or_path", evil, "--data_files", rows],
        "dpo": ["--model_name_or_path", evil, "--data_files", rows],
        "grpo": ["--model_name_or_path", evil, "--data_files", rows, "--reward_model_path", evil],
        "ppo": ["--model_name_or_path", str(saved_model), "--data_files", rows, "--reward_model_path", evil],
        "pretrain": ["--config", "tiny", "--data_files", str(root / "text.txt"), "--model_name_or_path", evil],
        "pretrain-tokenizer": ["--config", "tiny", "--data_files", str(root / "text.txt"),
                               "--tokenizer_name_or_path", str(root / "evil_tokenizer")],
        "mlm": ["--data_files", str(root / "text.txt"), "--model_name_or_path", evil],
        "classify": ["--model_name_or_path", evil, "--data_files", rows],
        "translate": ["--tokenizer_name_or_path", str(root / "evil_tokenizer")],
    }[stage] + common


RECIPE_ENTRIES = ["sft", "reward", "dpo", "grpo", "ppo", "pretrain", "pretrain-tokenizer", "mlm", "classify",
                  "translate"]


@pytest.mark.parametrize("entry", [*RECIPE_ENTRIES, "generate", "chat"])
def test_no_entry_point_runs_a_folders_code_even_when_stdin_says_yes(entry, hostile, saved_model, tmp_path,
                                                                     monkeypatch, capsys):
    """Every entry point passes trust_remote_code explicitly, so transformers never asks `[y/N]`: a "y" waiting on
    stdin is never read, no code runs, and the run ends with one line."""
    import io

    from hf_gpt.cli import main
    from hf_gpt.recipe_utils import run_recipe

    root, marker = hostile
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 100))
    with pytest.raises(SystemExit) as stop:
        if entry in RECIPE_ENTRIES:
            run_recipe(entry.split("-")[0], stage_argv(root, entry, saved_model, tmp_path))
        else:
            main([entry, str(root / "evil_model"), *(["Hello"] if entry == "generate" else [])])
    message = stop.value.code
    assert not marker.exists(), marker.read_text()
    assert isinstance(message, str) and "\n" not in message and "--trust-remote-code" in message, message
    assert sys.stdin.read(2) == "y\n"  # nothing was read from stdin
