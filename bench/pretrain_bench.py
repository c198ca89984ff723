"""Pretraining quality per wall-clock second, against nanoGPT's published CPU quick start (a benchmark, not a test).

    python bench/pretrain_bench.py [--max_steps N] [any PretrainConfig flag]

Runs the `shakespeare` preset (nanoGPT's CPU size: 4 layers, 4 heads, 128 wide, batch 12, 2000 steps) on
../shared/data/tinyshakespeare/input.txt and reports val loss in nats per character (the text is ASCII, so
nats/char = bpb × ln 2) next to nanoGPT's anchor: "~3 minutes, val loss 1.88" for
`python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1
--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0`. Target: val loss <= 1.69 nats/char (0.90 × 1.88) in the same wall time.
"""

import math
import sys
import time
from pathlib import Path

from hf_gpt.pretrain import PretrainConfig, pretrain
from hf_gpt.recipe_utils import parse_recipe_args

NANOGPT_VAL_LOSS, NANOGPT_SECONDS = 1.88, 180.0


def main() -> None:
    argv = ["--config", "shakespeare", "--output_dir", "runs/bench-shakespeare", "--report_to", "none",
            "--save_strategy", "no", "--disable_tqdm", "true", *sys.argv[1:]]
    (args,) = parse_recipe_args((PretrainConfig,), stage="pretrain", argv=argv)
    text = Path(args.data_files[0]).read_text(encoding="utf-8")
    assert text.isascii(), "nats/char = bpb × ln 2 holds for ASCII text only"
    start = time.perf_counter()
    trainer = pretrain(args, resume_from_checkpoint=None)
    seconds = time.perf_counter() - start
    evals = [h for h in trainer.state.log_history if "eval_bpb" in h]
    nats_per_char = evals[-1]["eval_bpb"] * math.log(2)
    print("\n| run | steps | wall time (s) | val loss (nats/char) | ratio to nanoGPT |")
    print("|---|---:|---:|---:|---:|")
    print(f"| nanoGPT CPU quick start (published) | 2000 | ~{NANOGPT_SECONDS:.0f} | {NANOGPT_VAL_LOSS:.2f} | 1.00 |")
    print(f"| hf-gpt `shakespeare` preset | {trainer.state.global_step} | {seconds:.0f} | {nats_per_char:.3f} | "
          f"{nats_per_char / NANOGPT_VAL_LOSS:.3f} |")
    curve = ", ".join(f"{h['step']}: {h['eval_bpb'] * math.log(2):.3f}" for h in evals)
    verdict = "met" if nats_per_char <= 0.9 * NANOGPT_VAL_LOSS else "MISSED"
    print(f"\ntarget <= {0.9 * NANOGPT_VAL_LOSS:.2f} nats/char: {verdict}; val curve (step: nats/char): {curve}")


if __name__ == "__main__":
    main()
