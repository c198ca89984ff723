"""`make demo`: build a GPT end to end on text every Python install carries, then load it back and generate.

The embedded default needs no download and no ../shared: Python's own reference documentation
(`pydoc_data.topics`, ~0.5 MB of English) is the corpus.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .pretrain import PretrainConfig, pretrain


def write_embedded_corpus(folder: Path) -> Path:
    from pydoc_data.topics import topics

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pydoc_topics.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for text in topics.values():
            f.write(json.dumps({"text": text}) + "\n")
    return path


def run(output_dir: Path, max_steps: int) -> None:
    started = time.perf_counter()
    corpus = write_embedded_corpus(output_dir / "data")
    args = PretrainConfig(
        output_dir=str(output_dir / "base"),
        data_files=[str(corpus)],
        vocab_size=2048,
        block_size=128,
        n_layer=4,
        n_head=4,
        n_embd=128,
        per_device_train_batch_size=16,
        max_steps=max_steps,
        learning_rate=2e-3,
        eval_steps=max(max_steps // 4, 1),
        save_steps=max(max_steps // 2, 1),
        logging_steps=max(max_steps // 20, 1),
        report_to="none",
        sample_prompts=["The assert statement"],
    )
    trainer = pretrain(args, resume_from_checkpoint=True)
    metrics = [h for h in trainer.state.log_history if "eval_bpb" in h]

    # Load it back the way a user would, and generate.
    tokenizer = AutoTokenizer.from_pretrained(args.output_dir)
    model = AutoModelForCausalLM.from_pretrained(args.output_dir).eval()
    prompt = "The assert statement"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    torch.manual_seed(0)
    out = model.generate(ids, max_new_tokens=40, do_sample=True, temperature=0.7, top_p=0.9)
    print("\n=== hf-gpt demo ===")
    print(f"model: {args.output_dir} ({model.num_parameters():,} parameters)")
    print(f"val bits per byte: {metrics[0]['eval_bpb']:.3f} (step {metrics[0]['step']}) → "
          f"{metrics[-1]['eval_bpb']:.3f} (step {metrics[-1]['step']})")
    print(f"sample (T=0.7, top-p=0.9): {tokenizer.decode(out[0], skip_special_tokens=True)!r}")
    print(f"done in {time.perf_counter() - started:.0f} s; curves: {args.output_dir}/curves.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--max-steps", type=int, default=400)
    args = parser.parse_args()
    run(args.output_dir, args.max_steps)


if __name__ == "__main__":
    main()
