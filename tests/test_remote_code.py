"""A saved folder must load where hf_gpt is not installed, through trust_remote_code (as from the Hub)."""

import json
import os
import subprocess
import sys
import textwrap

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
