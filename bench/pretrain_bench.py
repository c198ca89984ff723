"""Pretraining quality per wall-clock second: hf-gpt's `shakespeare` preset against nanoGPT's CPU quick start, both
run here, one after the other (a benchmark, not a test).

    python bench/pretrain_bench.py [--reference_steps N] [--max_steps N] [any PretrainConfig flag]
    python bench/pretrain_bench.py --ablation [--variants NAME ...]   # the preset's settings one by one (see VARIANTS)

nanoGPT's quick start is `python train.py config/train_shakespeare_char.py --device=cpu --compile=False
--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`, published as "~3 minutes, val loss 1.88". Its reference here
is that recipe in plain PyTorch (the nanoGPT-style model of bench/gpu_bench.py): characters as tokens, the first 90 %
of ../shared/data/tinyshakespeare/input.txt for training, random 64-character windows, batch 12, AdamW (β2 0.99,
weight decay 0.1 on matrices), lr 1e-3 warmed up over 100 steps and cosine-decayed to 1e-4 at step 2000, clip 1.0.
hf-gpt runs its `shakespeare` preset (the same model size and batch, a 512-token BPE, context 64 tokens ≈ 120
characters). Both are scored on the held-out last 10 % in nats per character (for the BPE model: bpb × ln 2, the text
being ASCII). Target: at equal wall time (hf-gpt's last evaluation that ended within the reference's training time,
its BPE training and data preparation counted), hf-gpt's val loss <= 0.90 × the reference's.

`--ablation` runs the reference once, then each of VARIANTS (the preset as it is, and the preset's size with
nanoGPT's own choices changed one or two at a time: the optimizer, the learning-rate schedule and its length, the
position encoding, the head), each scored the same way at the reference's wall time; target for the best: <= 0.80 ×
the reference's.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from hf_gpt.pretrain import PretrainConfig, pretrain
from hf_gpt.recipe_utils import parse_recipe_args

sys.path.insert(0, str(Path(__file__).parent))
from gpu_bench import PlainGPT  # noqa: E402

NANOGPT_VAL_LOSS, NANOGPT_SECONDS = 1.88, 180.0  # the published quick-start figures


def nanogpt_reference(text: str, steps: int = 2000, seed: int = 0) -> dict:
    """nanoGPT's train_shakespeare_char quick start in plain PyTorch: seconds and val loss (nats/char)."""
    torch.manual_seed(seed)
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    block, batch = 64, 12
    model = PlainGPT(len(chars), block + 1, layers=4, d=128, heads=4)  # block inputs + the last target
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99))

    def lr(step: int) -> float:  # nanoGPT's get_lr: linear warmup, cosine to min_lr at lr_decay_iters
        if step < 100:
            return 1e-3 * (step + 1) / 101
        return 1e-4 + 0.5 * (1 + math.cos(math.pi * min(1.0, (step - 100) / (steps - 100)))) * (1e-3 - 1e-4)

    start = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr(step)
        offsets = torch.randint(len(train) - block - 1, (batch,))
        loss = model(torch.stack([train[i:i + block + 1] for i in offsets]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    model.eval()
    windows = val[: (len(val) - 1) // block * block + 1]
    with torch.no_grad():  # every held-out character once, in non-overlapping windows (not 20 random batches)
        losses = [model(torch.stack([windows[i:i + block + 1] for i in range(s, min(s + 64 * block, len(windows) - 1),
                                                                               block)]))
                  for s in range(0, len(windows) - 1, 64 * block)]
    return {"steps": steps, "seconds": seconds, "nats_per_char": float(torch.stack(losses).mean())}


class EvalClock(TrainerCallback):
    """Wall time since the run began (tokenizer training and data preparation included) at every evaluation."""

    def __init__(self, start: float):
        self.start, self.evals = start, []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_bpb" in metrics:
            self.evals.append((state.global_step, time.perf_counter() - self.start, metrics["eval_bpb"] * math.log(2)))


MUON = ["--muon", "true"]
WSD = ["--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs", '{"num_decay_steps": 600, '
       '"decay_type": "linear"}']  # the last 30 % of 2000 steps decays linearly to 0 (a trapezoid)
ROPE = ["--position_embedding_type", "rope"]
# Every variant but "preset" starts from nanoGPT's own choices at the preset's size (AdamW lr 2e-3, cosine, learned
# positions, tied head, 2000 steps), so that a name means the same whatever the preset has become.
NANOGPT_CHOICES = ["--muon", "false", "--position_embedding_type", "learned", "--max_steps", "2000"]
VARIANTS = {  # name → flags over NANOGPT_CHOICES ("preset": the `shakespeare` preset as it is)
    "preset": [],
    "AdamW": [],
    "AdamW, warmup-stable-decay": WSD,
    "AdamW, RoPE": ROPE,
    "Muon 0.02": [*MUON, "--muon_learning_rate", "0.02"],
    "Muon 0.05": [*MUON, "--muon_learning_rate", "0.05"],
    "Muon 0.05, warmup-stable-decay": [*MUON, "--muon_learning_rate", "0.05", *WSD],
    "Muon 0.05, RoPE": [*MUON, "--muon_learning_rate", "0.05", *ROPE],
    "Muon 0.05, sinusoidal": [*MUON, "--muon_learning_rate", "0.05", "--position_embedding_type", "sinusoidal"],
    "Muon 0.05, untied head": [*MUON, "--muon_learning_rate", "0.05", "--tie_word_embeddings", "false"],
    # The schedule sized to end within the reference's time (as the reference's own does), not cut off mid-decay:
    "AdamW, 1500 steps": ["--max_steps", "1500"],
    "AdamW, RoPE, 1500 steps": [*ROPE, "--max_steps", "1500"],
    "Muon 0.05, 1250 steps": [*MUON, "--muon_learning_rate", "0.05", "--max_steps", "1250"],
    "Muon 0.08, 1250 steps": [*MUON, "--muon_learning_rate", "0.08", "--max_steps", "1250"],
    "Muon 0.05, RoPE, 1250 steps": [*MUON, "--muon_learning_rate", "0.05", *ROPE, "--max_steps", "1250"],
    "Muon 0.05, RoPE, 1000 steps": [*MUON, "--muon_learning_rate", "0.05", *ROPE, "--max_steps", "1000"],
}


def run_preset(argv: list[str], reference_seconds: float) -> dict:
    """The `shakespeare` preset with `argv` over it: the whole run, its last evaluation within `reference_seconds`
    of wall time, and its validation curve."""
    argv = ["--config", "shakespeare", "--output_dir", "runs/bench-shakespeare", "--overwrite_output_dir", "true",
            "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", *argv]
    (args,) = parse_recipe_args((PretrainConfig,), stage="pretrain", argv=argv)
    start = time.perf_counter()
    clock = EvalClock(start)
    trainer = pretrain(args, resume_from_checkpoint=None, callbacks=[clock])
    seconds = time.perf_counter() - start
    ours = {"steps": trainer.state.global_step, "seconds": seconds, "nats_per_char": clock.evals[-1][2]}
    in_time = [e for e in clock.evals if e[1] <= reference_seconds]  # evaluations that ended within its time
    at_equal_time = dict(zip(("steps", "seconds", "nats_per_char"), in_time[-1])) if in_time else None
    return {"ours": ours, "at_equal_time": at_equal_time, "curve": clock.evals}


def ablation(names: list[str], reference_steps: int | None, argv: list[str], reference: dict | None = None) -> dict:
    """The reference (unless given), then every variant in `names`: one table of val loss at the reference's wall
    time."""
    if reference is None:
        (args,) = parse_recipe_args((PretrainConfig,), stage="pretrain", argv=["--config", "shakespeare", *argv])
        reference = nanogpt_reference(Path(args.data_files[0]).read_text(encoding="utf-8"), reference_steps or 2000)
    runs = {name: run_preset([*(NANOGPT_CHOICES if name != "preset" else []), *VARIANTS[name], *argv],
                             reference["seconds"]) for name in names}
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads; reference (nanoGPT's recipe in plain "
          f"PyTorch): {reference['steps']} steps, {reference['seconds']:.0f} s, {reference['nats_per_char']:.3f} "
          "nats/char\n")
    print("| hf-gpt `shakespeare` with | val loss at the reference's wall time (step) | ratio to the reference | "
          "whole run: steps, s, val loss |")
    print("|---|---:|---:|---|")
    for name, run in runs.items():
        at, whole = run["at_equal_time"], run["ours"]
        at_text = f"{at['nats_per_char']:.3f} ({at['steps']})" if at else "no evaluation in time"
        ratio = f"{at['nats_per_char'] / reference['nats_per_char']:.3f}" if at else "—"
        print(f"| {name} | {at_text} | {ratio} | {whole['steps']}, {whole['seconds']:.0f}, "
              f"{whole['nats_per_char']:.3f} |")
    scored = {n: r["at_equal_time"]["nats_per_char"] for n, r in runs.items() if r["at_equal_time"]}
    if scored:
        best = min(scored, key=scored.get)
        ratio = scored[best] / reference["nats_per_char"]
        print(f"\nbest: {best}, {ratio:.3f}x the reference at equal wall time (target <= 0.80: "
              f"{'met' if ratio <= 0.8 else 'MISSED'})")
    return {"reference": reference, "runs": runs}


def main(argv: list[str] | None = None, reference_steps: int | None = None) -> dict:
    """Runs the reference, then the preset (flags in `argv` override it); prints the table; returns its figures."""
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # the rest go to the preset
    own.add_argument("--reference_steps", type=int, default=reference_steps)
    own.add_argument("--ablation", action="store_true")
    own.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    known, argv = own.parse_known_args(sys.argv[1:] if argv is None else argv)
    reference_steps = known.reference_steps
    if known.ablation:
        return ablation(known.variants, reference_steps, argv)
    argv = ["--config", "shakespeare", "--output_dir", "runs/bench-shakespeare", "--overwrite_output_dir", "true",
            "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", *argv]
    (args,) = parse_recipe_args((PretrainConfig,), stage="pretrain", argv=argv)
    text = Path(args.data_files[0]).read_text(encoding="utf-8")
    assert text.isascii(), "nats/char = bpb × ln 2 holds for ASCII text only"
    reference = nanogpt_reference(text, reference_steps or 2000)
    start = time.perf_counter()
    clock = EvalClock(start)
    trainer = pretrain(args, resume_from_checkpoint=None, callbacks=[clock])
    seconds = time.perf_counter() - start
    ours = {"steps": trainer.state.global_step, "seconds": seconds, "nats_per_char": clock.evals[-1][2]}
    in_time = [e for e in clock.evals if e[1] <= reference["seconds"]]  # evaluations that ended within its time
    at_equal_time = dict(zip(("steps", "seconds", "nats_per_char"), in_time[-1])) if in_time else None
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads\n")
    print("| run | steps | wall time (s) | val loss (nats/char) | ratio to the reference |")
    print("|---|---:|---:|---:|---:|")
    print(f"| nanoGPT CPU quick start (published, another machine) | 2000 | ~{NANOGPT_SECONDS:.0f} | "
          f"{NANOGPT_VAL_LOSS:.2f} | |")
    rows = [("nanoGPT's recipe in plain PyTorch (reference, this run)", reference),
            ("hf-gpt `shakespeare` preset, whole run (BPE training, evaluations, saving included)", ours)]
    if at_equal_time:
        rows.append(("hf-gpt, last evaluation within the reference's wall time", at_equal_time))
    for name, run in rows:
        print(f"| {name} | {run['steps']} | {run['seconds']:.0f} | {run['nats_per_char']:.3f} | "
              f"{run['nats_per_char'] / reference['nats_per_char']:.3f} |")
    met = at_equal_time is not None and at_equal_time["nats_per_char"] <= 0.9 * reference["nats_per_char"]
    curve = ", ".join(f"{step}: {loss:.3f} ({t:.0f} s)" for step, t, loss in clock.evals)
    print(f"\ntarget <= 0.90 x the reference's val loss at equal wall time: {'met' if met else 'MISSED'}; "
          f"hf-gpt val curve (step: nats/char (wall time)): {curve}")
    return {"reference": reference, "ours": ours, "at_equal_time": at_equal_time}


if __name__ == "__main__":
    main()
