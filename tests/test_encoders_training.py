"""Training the lecture's other two Transformers: the recipes and `make demo-transformers`, run small."""

import json
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from hub_server import hub_env, push_cli, start
from huggingface_hub import ModelCard
from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

from hf_gpt.classify import ClassifyConfig, train_classifier
from hf_gpt.demo_transformers import COMPARISON_SCALES, run
from hf_gpt.hub import render_card
from hf_gpt.mlm import MlmConfig, pretrain_mlm
from hf_gpt.recipe_utils import run_recipe
from hf_gpt.seq2seq import TranslateConfig, train_translation

pytestmark = pytest.mark.slow
QUIET = dict(report_to="none", disable_tqdm=True, save_strategy="no")


def test_transformers_demo_runs_reports_and_reuses_its_stages(tmp_path, capsys):
    metrics = run(tmp_path, COMPARISON_SCALES["tiny"])
    report = (tmp_path / "report.md").read_text()
    for heading in ("GPT vs BERT: fill the blank", "Encoder-decoder: English → Korean", "The lecture's shapes"):
        assert heading in report
    for picture in ("cross_attention", "gpt_attention", "bert_attention"):
        assert (tmp_path / f"{picture}.png").stat().st_size > 5000, picture
    shapes = {r["lecture"]: r["shape"] for r in metrics["translate"]["shapes"]}
    assert shapes["(h, T, L)"][1:] == (shapes["(h, T, T)"][1], shapes["(h, L, L)"][1])
    assert {r["blank"] for r in metrics["slide"]["accuracy"]} == {"capital (en)", "capital (ko)", "sum"}
    assert metrics["translate"]["held_out_pairs"] == 24
    capsys.readouterr()
    run(tmp_path, COMPARISON_SCALES["tiny"])
    again = capsys.readouterr().out
    assert all(f"[stage {i}/3: {name}] reusing" in again for i, name in ((1, "gpt"), (2, "bert"), (3, "translate")))


def test_mlm_recipe_learns_and_refuses_to_overwrite(tmp_path):
    text = tmp_path / "text.jsonl"
    rng = random.Random(0)
    rows = [{"text": " ".join(f"{a} plus {b} is {a + b}." for a, b in ((rng.randrange(10), rng.randrange(10))
                                                                       for _ in range(6)))} for _ in range(400)]
    text.write_text("\n".join(json.dumps(r) for r in rows))
    args = dict(output_dir=str(tmp_path / "mlm"), data_files=[str(text)], vocab_size=300, block_size=32, n_layer=2,
                n_head=2, n_embd=64, position_embedding_type="rope", per_device_train_batch_size=16, learning_rate=3e-3,
                max_steps=300, eval_steps=300,
                logging_steps=50, **QUIET)
    trainer = pretrain_mlm(MlmConfig(**args))
    accuracy = trainer.state.log_history[-1].get("eval_masked_accuracy") or next(
        h["eval_masked_accuracy"] for h in reversed(trainer.state.log_history) if "eval_masked_accuracy" in h)
    assert accuracy > 0.5  # "a plus b is c.": guessable from both sides; measured 0.58 (RoPE, 300 steps), untrained ~0
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm")
    assert not model.config.is_causal
    assert "fill-mask" in render_card(tmp_path / "mlm", "me/mlm")
    with pytest.raises(ValueError, match="holds a finished"):
        pretrain_mlm(MlmConfig(**args))


def test_classifier_on_an_encoder_and_a_decoder(tmp_path, tokenizer, model_folder, tiny_config):
    """Both kinds learn a toy sentiment task whose label is a word at a random place; whole groups held out."""
    from hf_gpt import HfGptForMaskedLM

    torch.manual_seed(0)
    bert = HfGptForMaskedLM(tiny_config(is_causal=False, vocab_size=len(tokenizer), hidden_size=64))
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    gpt = model_folder(tmp_path, tokenizer, "gpt")
    rng = random.Random(0)
    filler = ["the", "movie", "was", "really", "quite", "and", "story", "actors", "music"]
    rows = []
    for i in range(600):
        label = i % 2
        words = rng.sample(filler, 6)
        words.insert(rng.randrange(7), "great" if label else "awful")
        rows.append({"text": " ".join(words), "label": label, "group": i // 10})
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    for kind, folder in (("encoder", tmp_path / "bert"), ("decoder", gpt)):
        out = tmp_path / f"clf-{kind}"
        train_classifier(ClassifyConfig(model_name_or_path=str(folder), data_files=[str(data)], group_column="group",
                                        output_dir=str(out), num_train_epochs=3, learning_rate=1e-3,
                                        per_device_train_batch_size=16, **{**QUIET, "save_strategy": "epoch"}))
        metrics = json.loads((out / "training_summary.json").read_text())["metrics"]
        assert metrics["accuracy"] > 0.9, (kind, metrics)
        assert metrics["pooling"] == ("first token" if kind == "encoder" else "last token")
        assert metrics["majority_baseline"] == pytest.approx(0.5, abs=0.1)
        assert "text-classification" in render_card(out, "me/clf")


LOAD_SEQ2SEQ = textwrap.dedent("""
    import json, sys
    sys.modules["hf_gpt"] = None  # as on a machine without hf_gpt: only the repo's code may run
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained("tester/translate", trust_remote_code=True)
    model = AutoModelForSeq2SeqLM.from_pretrained("tester/translate", trust_remote_code=True).eval()
    out = model.generate(**tok("3 plus 4 is 7.", return_tensors="pt"), max_new_tokens=6, min_new_tokens=6,
                         do_sample=False)
    print("RESULT " + json.dumps(out[0].tolist()))
""")


def test_translate_recipe_as_a_command_then_hub_round_trip(tmp_path):
    out = tmp_path / "tr"
    argv = ["--output_dir", str(out), "--max_steps", "3", "--n_embd", "32", "--report_to", "none"]
    run_recipe("translate", argv)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["stage"] == "seq2seq" and 0 <= summary["metrics"]["held_out_chrf"] <= 100
    assert len((out / "held_out_translations.jsonl").read_text().splitlines()) == 24
    with pytest.raises(SystemExit, match="holds a finished"):
        run_recipe("translate", argv)
    card = ModelCard(render_card(out, "tester/translate"))
    assert card.data.pipeline_tag == "translation" and card.data.eval_results[0].metric_type == "chrf"
    server, _, url = start("regular")
    try:
        env = hub_env(url, tmp_path)
        pushed = push_cli(out, "tester/translate", env)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        loaded = subprocess.run([sys.executable, "-c", LOAD_SEQ2SEQ], env=env, capture_output=True, text=True,
                                timeout=300, cwd=tmp_path)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
    finally:
        server.shutdown()
    generated = json.loads(next(line[7:] for line in loaded.stdout.splitlines() if line.startswith("RESULT ")))
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    local = model.generate(**tokenizer("3 plus 4 is 7.", return_tensors="pt"), max_new_tokens=6, min_new_tokens=6,
                           do_sample=False)
    assert generated == local[0].tolist()


def test_translation_rejects_held_out_rows_in_training(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"source": "a", "target": "b"}) + "\n")
    with pytest.raises(ValueError, match="also training sources"):
        train_translation(TranslateConfig(output_dir=str(tmp_path / "o"), data_files=[str(rows)],
                                          eval_data_files=[str(rows)], max_steps=1, **QUIET))
