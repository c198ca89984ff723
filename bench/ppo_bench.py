"""Our PPO vs the last TRL release that had a PPOTrainer (trl==1.12.0, `trl.experimental.ppo`), same models, data,
batch sizes and steps (a benchmark, not a test).

    python bench/ppo_bench.py [--steps 20 60] [--seeds 0 1 2 3 4] [--ours default max_grad_norm=0,adam_epsilon=1e-8]

It builds the policy (SFT), reward and value models on the demo's world at CI scale (reused if present), then runs
  - ours: `hf_gpt.ppo.PPOTrainer` in this interpreter;
  - TRL 1.12: in a separate venv this script creates (`.venv-trl112`, torch from the pinned CPU wheel, transformers
    5.24), given pre-tokenised prompts, as that trainer requires.
Our learning rate is constant by default (hf_gpt's PPOConfig); TRL 1.12's decays linearly to zero over the run (its
TrainingArguments default). `--ours` runs ours once per variant beside one TRL run: a variant is `default` or
PPOConfig fields set away from the bench's settings, `field=value[,field=value]` (`lr_scheduler_type=linear` gives
ours TRL's schedule; `--lr-scheduler S ...` is short for `--ours lr_scheduler_type=S ...`). Each trainer runs once per
seed (its sampling, shuffling and initial value head follow the seed). It prints, per trainer, seconds per PPO step
and the reward-model score gain (first vs last quarter of steps) and the final KL as mean ± the 95 % interval of the
mean over the seeds (Student's t). Targets: a mean gain at least TRL 1.12's at <= 0.7x its step time, with a final
KL no more than TRL's mean + its interval.
"""

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import textwrap
import time
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-trl112"
BATCH, RESPONSE, EPOCHS, LR, KL, TEMPERATURE = 16, 24, 2, 1e-5, 0.05, 0.7

TRL_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    sft, rm, prompts_file, out, steps, batch, response, epochs, lr, kl, temperature, seed = sys.argv[1:]
    steps, batch, response, epochs, seed = int(steps), int(batch), int(response), int(epochs), int(seed)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(sft, padding_side="left")
    load = dict(trust_remote_code=True)
    policy, ref = AutoModelForCausalLM.from_pretrained(sft, **load), AutoModelForCausalLM.from_pretrained(sft, **load)
    reward = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1, **load)
    value = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1, **load)
    prompts = [json.loads(line) for line in open(prompts_file)]
    ids = [tok.apply_chat_template(p, add_generation_prompt=True, return_dict=True)["input_ids"] for p in prompts]
    dataset = Dataset.from_dict({"input_ids": ids})
    args = PPOConfig(output_dir=out, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                     num_mini_batches=1, total_episodes=steps * batch, num_ppo_epochs=epochs, response_length=response,
                     temperature=float(temperature), learning_rate=float(lr), kl_coef=float(kl),
                     missing_eos_penalty=1.0, stop_token="eos", num_sample_generations=0, report_to="none",
                     save_strategy="no", use_cpu=True, bf16=False, logging_steps=1,
                     local_rollout_forward_batch_size=batch, seed=seed)
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=dataset)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    history = [h for h in trainer.state.log_history if "objective/scores" in h]
    print("RESULT " + json.dumps({"seconds": seconds, "scores": [h["objective/scores"] for h in history],
                                  "kl": [h["objective/kl"] for h in history]}))
""")


def ensure_venv() -> Path:
    """TRL 1.12 beside the pinned CPU torch in its own venv, installed once with uv (and this machine's pip
    find-links, where the torch wheel is); CalledProcessError when PyPI cannot be reached."""
    python, stamp = VENV / "bin" / "python", VENV / ".installed"
    if not stamp.exists():
        uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv"
        links = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                               capture_output=True, text=True).stdout.split()
        subprocess.run([uv, "venv", "-q", "--allow-existing", "--python", sys.executable, str(VENV)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(python),
                        *[arg for link in links for arg in ("--find-links", link)], "torch==2.13.0",
                        "transformers==5.24.0", "trl==1.12.0", "accelerate", "datasets"], check=True)
        stamp.touch()
    return python


def models(out: Path) -> tuple[Path, Path]:
    from hf_gpt.demo import SCALES, Pipeline

    Pipeline(out, "world", dataclasses.replace(SCALES["tiny"], ppo_steps=1), fresh=False).run()
    return out / "sft", out / "reward"


def summary(scores: list[float], kl: list[float]) -> tuple[float, float]:
    k = max(len(scores) // 4, 1)
    return sum(scores[-k:]) / k - sum(scores[:k]) / k, kl[-1]


def write_prompts(steps: int, out: Path) -> tuple[list[dict], Path]:
    """The demo's PPO prompts (seen subjects, system prompt varied or absent), and the same as chat messages in a
    JSONL file for the TRL run."""
    from hf_gpt import world
    from hf_gpt.chat import prompt_to_messages

    rows = world.ppo_prompts(BATCH * steps)
    out.mkdir(parents=True, exist_ok=True)
    prompts_file = out / f"bench_prompts_{steps}.jsonl"
    prompts_file.write_text("".join(json.dumps(prompt_to_messages(r["prompt"])) + "\n" for r in rows))
    return rows, prompts_file


def parse_variant(spec: str) -> dict:
    """`default` -> {}; `field=value[,field=value]` -> PPOConfig overrides, each value read as its field's type
    (ValueError naming the field when there is no such field or the value does not fit it)."""
    from hf_gpt.ppo import PPOConfig

    if spec == "default":
        return {}
    fields = {f.name: f for f in dataclasses.fields(PPOConfig)}
    overrides = {}
    for pair in spec.split(","):
        name, sep, text = pair.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--ours {spec!r}: {pair!r} is not field=value with a PPOConfig field")
        kinds = {k for k in typing.get_args(fields[name].type) or (fields[name].type,) if k is not type(None)}
        try:
            if text == "none" and type(None) in typing.get_args(fields[name].type):
                overrides[name] = None
            elif kinds == {bool}:
                overrides[name] = {"true": True, "false": False}[text.lower()]
            elif kinds in ({int}, {float}):
                overrides[name] = next(iter(kinds))(text)
            else:
                overrides[name] = text
        except (KeyError, ValueError):
            raise ValueError(f"--ours {spec!r}: {name} must be {' or '.join(k.__name__ for k in kinds)}, "
                             f"got {text!r}") from None
    return overrides


def ppo_config(sft: Path, rm: Path, steps: int, out: Path, seed: int = 0, **overrides):
    """The bench's PPOConfig: the settings both sides share (BATCH, RESPONSE, ...), then the variant's overrides."""
    from hf_gpt.ppo import PPOConfig

    settings = dict(output_dir=str(out), model_name_or_path=str(sft), reward_model_path=str(rm),
                    per_device_train_batch_size=BATCH, response_length=RESPONSE, num_ppo_epochs=EPOCHS,
                    learning_rate=LR, kl_coef=KL, temperature=TEMPERATURE, max_steps=steps, save_steps=0,
                    sample_every=0, logging_steps=1000, report_to="none", seed=seed)
    return PPOConfig(**{**settings, **overrides})


def run_ours(sft: Path, rm: Path, rows: list[dict], steps: int, out: Path, seed: int = 0, **overrides) -> dict:
    """hf_gpt's PPOTrainer in this interpreter: seconds, and RM score and KL per step."""
    from datasets import Dataset

    from hf_gpt.ppo import PPOTrainer, load_ppo_models

    config = ppo_config(sft, rm, steps, out, seed, **overrides)
    tokenizer, policy, ref, reward, value = load_ppo_models(config)
    trainer = PPOTrainer(config, policy, ref, value, tokenizer, Dataset.from_list(rows), reward_model=reward)
    start = time.perf_counter()
    history = trainer.train()
    return {"seconds": time.perf_counter() - start, "scores": [h["objective/scores"] for h in history],
            "kl": [h["objective/kl"] for h in history]}


def run_trl(python: Path, sft: Path, rm: Path, prompts_file: Path, steps: int, out: Path, seed: int = 0) -> dict:
    """TRL 1.12's PPOTrainer in its own venv, on the same prompts: seconds, and RM score and KL per step."""
    script = out.parent / "trl112_ppo.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(TRL_SCRIPT)
    result = subprocess.run([str(python), str(script), str(sft), str(rm), str(prompts_file), str(out), str(steps),
                             str(BATCH), str(RESPONSE), str(EPOCHS), str(LR), str(KL), str(TEMPERATURE), str(seed)],
                            capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        sys.exit(f"TRL 1.12 run failed:\n{result.stderr[-4000:]}")
    return json.loads(lines[-1][7:])


T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # t, 2-sided


def mean_interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95 % interval (Student's t over the seeds; None from one seed)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, T_95.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))


def difference_interval(a: list[float], b: list[float]) -> tuple[float, float | None]:
    """mean(a) − mean(b) and the half-width of its 95 % interval (Welch: unequal variances, Welch–Satterthwaite
    degrees of freedom rounded down); None with fewer than two seeds on a side."""
    diff = sum(a) / len(a) - sum(b) / len(b)
    if min(len(a), len(b)) < 2:
        return diff, None
    var = lambda x: sum((v - sum(x) / len(x)) ** 2 for v in x) / (len(x) - 1) / len(x)  # of the mean
    va, vb = var(a), var(b)
    if va + vb == 0:
        return diff, 0.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return diff, T_95.get(max(int(df), 1), 1.96) * math.sqrt(va + vb)


def _differs(ours_values: list[float], trl_values: list[float]) -> str:
    diff, half = difference_interval(ours_values, trl_values)
    if half is None:
        return f"{diff:+.3f}"
    noise = "beyond the seeds' noise" if abs(diff) > half else "within the seeds' noise"
    return f"{diff:+.3f} ± {half:.3f}, {noise}"


def _fmt(mean: float, half: float | None, sign: str = "") -> str:
    return f"{mean:{sign}.3f}" + (f" ± {half:.3f}" if half is not None else "")


def table(results: dict[int, dict[str, list[dict]]]) -> str:
    """{steps: {trainer: [one run per seed]}} as the markdown table README quotes: seconds per step, score gain and
    final KL (mean ± 95 % interval over the seeds), then the step-time ratio and the targets' verdicts."""
    lines = ["| steps | trainer | seeds | s / PPO step | RM score gain (first → last quarter) | final KL (k1) |",
             "|---:|---|---:|---:|---:|---:|"]
    verdicts = []
    for steps, runs in results.items():
        figures = {}
        for name, seeds in runs.items():
            gains, kls = zip(*(summary(run["scores"], run["kl"]) for run in seeds))
            seconds = sum(run["seconds"] for run in seeds) / len(seeds)
            figures[name] = (seconds, list(gains), list(kls))
            lines.append(f"| {steps} | {name} | {len(seeds)} | {seconds / steps:.2f} | "
                         f"{_fmt(*mean_interval(list(gains)), sign='+')} | {_fmt(*mean_interval(list(kls)))} |")
        if TRL not in figures:
            continue
        trl_s, trl_gains, trl_kls = figures.pop(TRL)
        trl_gain, trl_kl = mean_interval(trl_gains)[0], mean_interval(trl_kls)
        kl_bound = trl_kl[0] + (trl_kl[1] or 0.0)
        for name, (ours_s, gains, kls) in figures.items():
            ratio, gain, kl = ours_s / trl_s, mean_interval(gains)[0], mean_interval(kls)[0]
            verdicts.append(f"{steps} steps, {name}: step-time ratio (ours / TRL) {ratio:.2f}x "
                            f"({'met' if ratio <= 0.7 else 'MISSED'}: <= 0.7x); mean gain {gain:+.3f} vs "
                            f"{trl_gain:+.3f} ({'met' if gain >= trl_gain else 'MISSED'}: >= TRL's; difference "
                            f"{_differs(gains, trl_gains)}); final KL {kl:.3f} vs TRL's bound {kl_bound:.3f} "
                            f"({'met' if kl <= kl_bound else 'MISSED'}; difference {_differs(kls, trl_kls)})")
    return "\n".join(lines + ([""] + verdicts if verdicts else []))


TRL = "TRL 1.12 `PPOTrainer` (linear lr)"


def ours(variant: str) -> str:
    return f"hf_gpt `PPOTrainer` ({variant})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "runs" / "bench-ppo")
    parser.add_argument("--ours", nargs="+", default=[], metavar="VARIANT",
                        help="ours once per variant: default, or field=value[,field=value] (PPOConfig fields)")
    parser.add_argument("--lr-scheduler", nargs="+", default=[], metavar="SCHEDULE",
                        help="short for --ours lr_scheduler_type=SCHEDULE (ours is constant by default, TRL linear)")
    args = parser.parse_args()
    specs = args.ours + [f"lr_scheduler_type={s}" for s in args.lr_scheduler] or ["default"]
    try:
        variants = {spec: parse_variant(spec) for spec in specs}
        for overrides in variants.values():  # refused now, not after the models are built
            ppo_config(Path("sft"), Path("rm"), 1, args.output_dir, **overrides)
    except ValueError as error:
        parser.error(str(error))
    python = ensure_venv()
    sft, rm = models(args.output_dir)
    results = {}
    for steps in args.steps:
        rows, prompts_file = write_prompts(steps, args.output_dir)
        runs = results[steps] = {**{ours(spec): [] for spec in variants}, TRL: []}
        for seed in args.seeds:  # alternating, so that a slower spell of the machine hits both sides
            out = args.output_dir / f"{steps}-seed{seed}"
            for i, (spec, overrides) in enumerate(variants.items()):
                runs[ours(spec)].append(run_ours(sft, rm, rows, steps, out / f"ours-{i}", seed, **overrides))
            runs[TRL].append(run_trl(python, sft, rm, prompts_file, steps, out / "trl", seed))
            print(f"steps {steps}, seed {seed}: done", flush=True)
    print(f"\n{BATCH} rollouts per step, {RESPONSE} new tokens, {EPOCHS} PPO epochs, lr {LR}, beta {KL}, "
          f"seeds {' '.join(map(str, args.seeds))}; ours: constant lr, gradients clipped at norm 1, Adam eps 1e-5 "
          f"unless a variant says otherwise; TRL 1.12: linear lr, no clipping, Adam eps 1e-8\n")
    print(table(results))
    (args.output_dir / "results.json").write_text(json.dumps(results))  # every seed's run, for later comparisons


if __name__ == "__main__":
    main()
