"""`make demo-transformers`: the lecture's three Transformers, trained from the same blocks on the demo world.

1. GPT (decoder, masked self-attention) and BERT (encoder, bidirectional, masked LM) pretrained on the same text with
   the same tokenizer and size; then the lecture's slide as a measurement: fill the blank in "The capital of ___ is
   Paris." / "___ plus 4 is 7." GPT can only continue from the left; BERT reads both sides.
2. The encoder-decoder (self-attention, masked self-attention and cross-attention) trained to translate the world's
   English sentences into Korean, scored on held-out sentences (exact match, chrF), with the cross-attention map
   and the lecture's table of data shapes read from real tensors.

Offline, on the embedded world; writes runs/transformers/report.md. A second run reuses finished stages.
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

from . import world
from .cli import Parser
from .data import write_jsonl
from .demo import Pipeline, pipeline_run_args
from .hub import read_summary
from .loading import load_model, load_model_and_tokenizer
from .mlm import MlmConfig, pretrain_mlm
from .pretrain import PretrainConfig, pretrain
from .report import plot_attention, plot_cross_attention, write_transformers_report
from .seq2seq import TranslateConfig, exact_match, lecture_shapes, train_translation, translate


@dataclass
class ComparisonScale:
    """How much the GPT, BERT and encoder-decoder of the comparison train."""

    documents: int = 2000
    gpt_steps: int = 800
    # BERT learns only from its masked tokens, so it gets more steps, and 40 % masking (Wettig et al. 2023, "Should
    # You Mask 15% in Masked Language Modeling?"): at 15 % and 2000 steps it had not yet tied a capital to its country.
    bert_steps: int = 2000
    mlm_probability: float = 0.4
    translate_epochs: float = 60
    width: int = 128
    layers: int = 2


COMPARISON_SCALES = {"demo": ComparisonScale(),
          "tiny": ComparisonScale(documents=300, gpt_steps=40, bert_steps=40, translate_epochs=2, width=32)}


# ---------------------------------------------------------------- GPT vs BERT: fill the blank


FIRST_SENTENCE = "1 plus 1 is 2."  # says nothing about the blank; puts it mid-document, as in the training text
ATTENTION_SENTENCE = "The capital of France is Paris. 3 plus 4 is 7."


def blanks() -> list[dict]:
    """Sentences of the world with one word blanked whose answer is fixed by the words *after* the blank: the
    country of a capital (English and Korean), the first number of a sum (its second number and total follow)."""
    rows = []
    for name, capital, name_ko, capital_ko in world.CAPITALS:
        rows.append({"kind": "capital (en)", "left": f"{FIRST_SENTENCE} The capital of", "answer": f" {name}",
                     "right": f" is {capital}."})
        rows.append({"kind": "capital (ko)", "left": FIRST_SENTENCE, "answer": f" {name_ko}",
                     "right": f"의 수도는 {capital_ko}입니다."})
    for a in range(10):
        for b in range(1, 10, 3):
            rows.append({"kind": "sum", "left": FIRST_SENTENCE, "answer": f" {a}", "right": f" plus {b} is {a + b}."})
    return rows


def fill_blank_accuracy(gpt, bert, tokenizer) -> tuple[list[dict], list[dict]]:
    """Per kind: how often the blanked word is filled exactly, by GPT (greedy continuation of the left context, as
    many tokens as the word has) and by BERT (one [MASK] per token of the word, both contexts, argmax at each)."""
    rows, examples = {}, []
    for blank in blanks():
        left = [tokenizer.eos_token_id, *tokenizer(blank["left"])["input_ids"]]  # eos: a document boundary
        answer = tokenizer(blank["answer"])["input_ids"]
        right = tokenizer(blank["right"])["input_ids"]
        with torch.no_grad():
            gpt_ids = gpt.generate(torch.tensor([left]), max_new_tokens=len(answer), min_new_tokens=len(answer),
                                   do_sample=False, pad_token_id=tokenizer.pad_token_id)[0, len(left):].tolist()
            masked = left + [tokenizer.mask_token_id] * len(answer) + right
            bert_ids = bert(torch.tensor([masked])).logits[0, len(left):len(left) + len(answer)].argmax(-1).tolist()
        row = rows.setdefault(blank["kind"], {"blank": blank["kind"], "sentences": 0, "GPT (left only)": 0.0,
                                              "BERT (both sides)": 0.0})
        row["sentences"] += 1
        row["GPT (left only)"] += gpt_ids == answer
        row["BERT (both sides)"] += bert_ids == answer
        if sum(e["kind"] == blank["kind"] for e in examples) < 2:
            examples.append({"kind": blank["kind"], "sentence": f"{blank['left']} ___{blank['right']}",
                             "answer": blank["answer"].strip(), "GPT": tokenizer.decode(gpt_ids).strip(),
                             "BERT": tokenizer.decode(bert_ids).strip()})
    for row in rows.values():
        row["GPT (left only)"] /= row["sentences"]
        row["BERT (both sides)"] /= row["sentences"]
    return list(rows.values()), examples


# ---------------------------------------------------------------- stages


def gpt_stage(folder: Path, data: Path, scale: ComparisonScale, seed: int) -> dict:
    pretrain(PretrainConfig(
        output_dir=str(folder), data_files=[str(data)], vocab_size=1024, block_size=64, n_layer=scale.layers,
        n_head=4, n_embd=scale.width, per_device_train_batch_size=16, learning_rate=2e-3, max_steps=scale.gpt_steps,
        eval_steps=max(scale.gpt_steps // 4, 1), logging_steps=20, sample_prompts=["The capital of"],
        **pipeline_run_args(seed)))
    return read_summary(folder)["metrics"]


def bert_stage(folder: Path, data: Path, tokenizer: Path, scale: ComparisonScale, seed: int) -> dict:
    pretrain_mlm(MlmConfig(
        output_dir=str(folder), data_files=[str(data)], tokenizer_name_or_path=str(tokenizer), block_size=64,
        n_layer=scale.layers, n_head=4, n_embd=scale.width, per_device_train_batch_size=16, learning_rate=2e-3,
        mlm_probability=scale.mlm_probability, max_steps=scale.bert_steps, eval_steps=max(scale.bert_steps // 4, 1),
        logging_steps=50, **pipeline_run_args(seed)))
    return read_summary(folder)["metrics"]


def slide_stage(out: Path) -> dict:
    tokenizer, gpt = load_model_and_tokenizer(AutoModelForCausalLM, out / "gpt")
    bert = load_model(AutoModelForMaskedLM, out / "bert")
    gpt.eval(), bert.eval()
    accuracy, examples = fill_blank_accuracy(gpt, bert, tokenizer)
    with torch.no_grad():
        for name, model in (("GPT", gpt), ("BERT", bert)):
            path = out / f"{name.lower()}_attention.png"
            plot_attention(model, tokenizer, ATTENTION_SENTENCE, path, name=f"{name}: ")
    return {"accuracy": accuracy, "examples": examples}


def translation_stage(folder: Path, scale: ComparisonScale, seed: int) -> dict:
    train_translation(TranslateConfig(
        output_dir=str(folder), num_train_epochs=scale.translate_epochs, n_embd=scale.width, n_layer=scale.layers,
        n_encoder_layer=scale.layers, **pipeline_run_args(seed)))
    tokenizer, model = load_model_and_tokenizer(AutoModelForSeq2SeqLM, folder)
    model.eval()
    # The recipe already translated the held-out sentences: read them back, do not generate them twice.
    held = [json.loads(line) for line in (folder / "held_out_translations.jsonl").read_text("utf-8").splitlines()]
    hypotheses = [r["translation"] for r in held]
    seen = world.translation_pairs("train")[::10]
    by_kind = []
    for kind, test in (("capital", lambda r: r["source"].startswith("The capital")),
                       ("sum", lambda r: " plus " in r["source"])):
        pairs = [(h, r["target"]) for h, r in zip(hypotheses, held) if test(r)]
        by_kind.append({"held-out sentences": kind, "n": len(pairs),
                        "exact match": exact_match(*zip(*pairs))})
    seen_match = exact_match(translate(model, tokenizer, [r["source"] for r in seen]), [r["target"] for r in seen])
    example = next(r for r in held if " plus " in r["source"])
    source = tokenizer(example["source"], return_tensors="pt").input_ids
    target = tokenizer(example["target"], return_tensors="pt").input_ids
    decoder_input = torch.cat([torch.tensor([[model.config.decoder_start_token_id]]), target], dim=1)
    shapes = lecture_shapes(model, source, decoder_input)
    _, target_tokens = plot_cross_attention(model, tokenizer, example["source"], folder.parent / "cross_attention.png")
    return {**read_summary(folder)["metrics"], "seen_exact_match": seen_match, "by_kind": by_kind,
            "cross_attention_tokens": target_tokens,
            "shapes": shapes, "shapes_example": example,
            "samples": held[:8]}


def run(out: Path, scale: ComparisonScale, fresh: bool = False, seed: int = 0) -> dict[str, dict]:
    pipeline = Pipeline(out, "transformers", scale, fresh, seed, stages=3)  # GPT, BERT, the encoder-decoder
    data = write_jsonl(out / "data" / "pretrain.jsonl",
                       [{"text": t} for t in world.pretraining_documents(scale.documents)])
    pipeline.stage("gpt", lambda f: gpt_stage(f, Path(data), scale, seed))
    pipeline.stage("bert", lambda f: bert_stage(f, Path(data), out / "gpt", scale, seed))
    pipeline.metrics["slide"] = slide_stage(out)
    pipeline.stage("translate", lambda f: translation_stage(f, scale, seed))
    write_transformers_report(out, pipeline.metrics)
    return pipeline.metrics


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="demo", choices=sorted(COMPARISON_SCALES))
    parser.add_argument("--output-dir", type=Path, default=Path("runs/transformers"))
    parser.add_argument("--fresh", action="store_true", help="redo finished stages")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        metrics = run(args.output_dir, COMPARISON_SCALES[args.scale], args.fresh, args.seed)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"\n=== hf-gpt three Transformers done in {time.perf_counter() - start:.0f} s: "
          f"{args.output_dir / 'report.md'} ===")
    for row in metrics["slide"]["accuracy"]:
        print(row)
    print({k: v for k, v in metrics["translate"].items() if k in ("held_out_exact_match", "held_out_chrf",
                                                                   "seen_exact_match")})


if __name__ == "__main__":
    main()
