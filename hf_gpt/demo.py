"""`make demo`: the whole pipeline in one command — tokenizer → pretraining → SFT → reward model → PPO → chat.

The default world (`hf_gpt.world`) is generated here, offline, and has checkable answers, so every stage shows a
measured gain. `--data english|korean` runs the same stages on the real data sets in ../shared/data.
The run writes runs/<name>/report.md with a table per stage and PNG plots; a second run reuses finished stages
(`--fresh` redoes them).
"""

import argparse
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import world
from .ppo import PPOConfig, ppo
from .pretrain import PretrainConfig, pretrain
from .report import markdown_table, plot_attention, plot_lines, plot_position_encoding, plot_sft_loss_mask
from .reward import RewardRecipeConfig, train_reward_model
from .sft import SFTRecipeConfig, sample_answers, sft

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class Scale:
    documents: int = 3000
    pretrain_steps: int = 600
    sft_rows: int = 2000
    sft_steps: int = 600
    preference_rows: int = 4000
    reward_steps: int = 900
    reward_learning_rate: float = 3e-4
    ppo_steps: int = 40
    ppo_learning_rate: float = 1e-5
    eval_rows: int = 100
    width: int = 128
    layers: int = 4


SCALES = {"demo": Scale(), "tiny": Scale(documents=3000, pretrain_steps=600, sft_rows=2000, sft_steps=400,
                                         preference_rows=2000, reward_steps=400, ppo_steps=30, eval_rows=50)}
PRESETS = {  # real data: (pretraining files, SFT files, preference files)
    "english": (["tinyshakespeare/input.txt"], ["sft_dolly_2k/dolly_2k.jsonl"],
                ["pref_hh_rlhf_harmless_test/harmless_base_test.jsonl"]),
    "korean": (["ko_klue_sentences/klue_dev_sentences.jsonl"], ["sft_ko_chatbot/chatbot_qa.jsonl"],
               ["pref_hh_rlhf_harmless_test/harmless_base_test.jsonl"]),
}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


STAGES_DATA = ("pretrain", "sft", "preferences")
FILE_TYPES = (".txt", ".jsonl", ".json", ".parquet", ".csv")


def world_data(folder: Path, scale: Scale) -> dict[str, dict]:
    files = {
        "pretrain": write_jsonl(folder / "pretrain.jsonl",
                                [{"text": t} for t in world.pretraining_documents(scale.documents)]),
        "sft": write_jsonl(folder / "sft.jsonl", world.sft_rows(scale.sft_rows)),
        "preferences": write_jsonl(folder / "preferences.jsonl", world.preference_rows(scale.preference_rows)),
    }
    return {stage: {"data_files": [path]} for stage, path in files.items()}


def data_source(spec: str) -> dict:
    """One stage's data as config fields: a local file → data_files; a Hub name, or a local dataset folder (which
    `load_dataset` reads the same way) → dataset_name."""
    if Path(spec).is_file():
        return {"data_files": [spec]}
    if Path(spec).is_dir():
        return {"dataset_name": spec}
    if spec.endswith(FILE_TYPES) or spec.startswith((".", "/")):
        raise FileNotFoundError(f"{spec} is missing: give an existing file or a Hub dataset name.")
    return {"dataset_name": spec}


def preset_data(name: str) -> dict[str, dict]:
    """A preset (../shared/data), or "PRETRAIN,SFT,PREFERENCES": three local files or Hub dataset names."""
    if "," in name:
        specs = [part.strip() for part in name.split(",")]
        if len(specs) != 3 or not all(specs):
            raise ValueError(f"DATA={name!r}: give three sources, PRETRAIN,SFT,PREFERENCES (files or Hub names).")
        return {stage: data_source(spec) for stage, spec in zip(STAGES_DATA, specs)}
    if name not in PRESETS:
        raise ValueError(f"Unknown DATA preset {name!r}: use world (default), {', '.join(PRESETS)}, or three "
                         "sources PRETRAIN,SFT,PREFERENCES (local files or Hub dataset names).")
    paths = [[str(SHARED / p) for p in group] for group in PRESETS[name]]
    for path in (p for group in paths for p in group):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} is missing: the {name} preset reads ../shared/data beside the repo.")
    return {stage: {"data_files": group} for stage, group in zip(STAGES_DATA, paths)}


def is_right(answer: str, right: str, eos: str) -> bool:
    """Exact match: the one right sentence, then eos (text after eos, such as padding, is ignored)."""
    reply, stopped, _ = answer.partition(eos)
    return bool(stopped) and reply.strip() == right


@torch.no_grad()
def chat_accuracy(folder: Path, rows: list[dict], system_prompt: str, samples: int = 4) -> dict[str, float]:
    """Held-out questions: exact-match accuracy of greedy answers and of sampled ones (τ = 1, `samples` each, what
    PPO optimises), and the share of greedy answers that stop at eos."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompts = [[{"role": "system", "content": system_prompt}, {"role": "user", "content": r["prompt"]}] for r in rows]
    eos = tokenizer.eos_token
    greedy = sample_answers(model, tokenizer, prompts, max_new_tokens=32)
    tokenizer.padding_side = "left"  # generation continues every row from its last real token
    batch = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, padding=True, return_tensors="pt",
                                          return_dict=True)
    torch.manual_seed(0)
    out = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=32,
                         num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id)
    sampled = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:])
    rights = [r["answer"] for r in rows]
    return {"accuracy": sum(map(is_right, greedy, rights, [eos] * len(rows))) / len(rows),
            "accuracy_sampled": sum(is_right(a, rights[i // samples], eos) for i, a in enumerate(sampled))
            / len(sampled),
            "stops_at_eos": sum(eos in a for a in greedy) / len(rows)}


class Pipeline:
    def __init__(self, out: Path, data: str, scale: Scale, fresh: bool, seed: int = 0):
        self.out, self.data_name, self.scale, self.fresh, self.seed = out, data, scale, fresh, seed
        self.metrics: dict[str, dict] = {}

    def stage(self, name: str, run: Callable[[Path], dict]) -> dict:
        """Run a stage into out/<name>, or reuse it if it finished before with the same seed."""
        folder, done = self.out / name, self.out / name / "stage.json"
        before = json.loads(done.read_text()) if done.exists() and not self.fresh else None
        if before is not None and before.get("seed", 0) == self.seed:
            print(f"[{name}] reusing {folder} (finished before; --fresh to redo)")
            self.metrics[name] = before
            return before
        if folder.exists():
            shutil.rmtree(folder)
        print(f"\n[{name}] ..." + (f" (seed {before.get('seed', 0)} → {self.seed}: redone)" if before else ""))
        start = time.perf_counter()
        metrics = {**run(folder), "seed": self.seed, "seconds": round(time.perf_counter() - start, 1)}
        done.write_text(json.dumps(metrics, indent=1, ensure_ascii=False))
        self.metrics[name] = metrics
        return metrics

    def run(self) -> dict[str, dict]:
        s, world_mode = self.scale, self.data_name == "world"
        data = world_data(self.out / "data", s) if world_mode else preset_data(self.data_name)
        system = world.SYSTEM_PROMPT
        evals = world.eval_rows(s.eval_rows) if world_mode else []
        common = dict(report_to="none", disable_tqdm=True, save_strategy="no", seed=self.seed)

        def pretrain_stage(folder: Path) -> dict:
            trainer = pretrain(PretrainConfig(
                output_dir=str(folder), **data["pretrain"], vocab_size=1024, block_size=64,
                max_position_embeddings=128, n_layer=s.layers,
                n_head=4, n_embd=s.width, per_device_train_batch_size=16, max_steps=s.pretrain_steps,
                learning_rate=2e-3, eval_steps=max(s.pretrain_steps // 5, 1), logging_steps=10,
                sample_prompts=["The capital of Korea is", "대한민국의 수도는"], **common))
            evals_ = [h for h in trainer.state.log_history if "eval_bpb" in h]
            return {"steps": trainer.state.global_step, "val_bpb_first": evals_[0]["eval_bpb"],
                    "val_bpb_last": evals_[-1]["eval_bpb"], "val_loss_last": evals_[-1]["eval_loss"],
                    "bpb_curve": [(h["step"], h["eval_bpb"]) for h in evals_]}

        def sft_stage(folder: Path) -> dict:
            before = chat_accuracy(self.out / "base", evals, system) if evals else {}
            trainer = sft(SFTRecipeConfig(
                output_dir=str(folder), model_name_or_path=str(self.out / "base"), **data["sft"],
                system_prompt=system, max_steps=s.sft_steps, per_device_train_batch_size=16, learning_rate=1e-3,
                eval_steps=max(s.sft_steps // 4, 1), logging_steps=10, max_rows=s.sft_rows, eval_on_start=True,
                lr_scheduler_type="cosine", **common))
            after = chat_accuracy(folder, evals, system) if evals else {}
            losses = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
            return {"steps": trainer.state.global_step, "eval_loss_curve": losses,
                    **{f"{k}_before": v for k, v in before.items()}, **{f"{k}_after": v for k, v in after.items()}}

        def reward_stage(folder: Path) -> dict:
            train_reward_model(RewardRecipeConfig(
                output_dir=str(folder), model_name_or_path=str(self.out / "sft"), **data["preferences"],
                max_rows=s.preference_rows, max_steps=s.reward_steps, system_prompt=system,
                per_device_train_batch_size=16,
                learning_rate=s.reward_learning_rate, eval_steps=max(s.reward_steps // 3, 1), logging_steps=10,
                lr_scheduler_type="cosine", **common))
            metrics = json.loads((folder / "reward_metrics.json").read_text())
            return {"steps": s.reward_steps, "pairwise_accuracy": metrics["pairwise_accuracy"]}

        def ppo_stage(folder: Path) -> dict:
            prompts = {"data_files": [write_jsonl(self.out / "data" / "ppo_prompts.jsonl",
                                                  [{"prompt": r["prompt"]} for r in world.eval_rows(400, seed=4)])]} \
                if world_mode else data["preferences"]  # PPO reads the prompts of the preference data
            # Reward = the RM's score alone, as in the lecture (no checker): accuracy rises only as far as the RM
            # is right. It is weakest on sums with a near-miss value: see docs/experiments.md.
            trainer = ppo(PPOConfig(
                output_dir=str(folder), model_name_or_path=str(self.out / "sft"),
                reward_model_path=str(self.out / "reward"), **prompts, system_prompt=system,
                max_rows=400, drop_long_prompts=not world_mode, max_steps=s.ppo_steps,
                per_device_train_batch_size=16, response_length=32,
                temperature=0.7, num_ppo_epochs=2, learning_rate=s.ppo_learning_rate, kl_coef=0.05, save_steps=0,
                sample_every=5,
                report_to="none", seed=self.seed))
            history = trainer.log_history
            after = chat_accuracy(folder, evals, system) if evals else {}
            k = max(len(history) // 4, 1)
            mean = lambda rows, key: sum(h[key] for h in rows) / len(rows)
            return {"steps": len(history), "score_first": mean(history[:k], "objective/scores"),
                    "score_last": mean(history[-k:], "objective/scores"),
                    "kl_max": max(h["objective/kl"] for h in history),
                    **{f"{name}_after": v for name, v in after.items()},
                    "score_curve": [(h["step"], h["objective/scores"]) for h in history],
                    "kl_curve": [(h["step"], h["objective/kl"]) for h in history]}

        self.stage("base", pretrain_stage)
        self.stage("sft", sft_stage)
        self.stage("reward", reward_stage)
        self.stage("ppo", ppo_stage)
        self.write_report(system)
        return self.metrics

    def write_report(self, system: str) -> Path:
        m, out, pics = self.metrics, self.out, self.out / "plots"
        pics.mkdir(parents=True, exist_ok=True)
        tokenizer = AutoTokenizer.from_pretrained(out / "ppo")
        model = AutoModelForCausalLM.from_pretrained(out / "ppo").eval()
        plot_position_encoding(pics / "position_encoding.png", 64, model.config.hidden_size,
                               model.config.sinusoidal_base)
        plot_attention(model, tokenizer, "The capital of Korea is Seoul. 3 plus 4 is 7.",
                       pics / "attention.png")
        plot_sft_loss_mask(tokenizer, [{"role": "system", "content": system},
                                       {"role": "user", "content": "What is the capital of France?"},
                                       {"role": "assistant", "content": "The capital of France is Paris."}],
                           pics / "sft_loss_mask.png")
        plot_lines(pics / "pretrain_bpb.png", "Pretraining: validation bits per byte", "step",
                   {"val bpb": m["base"]["bpb_curve"]})
        plot_lines(pics / "sft_eval_loss.png", "SFT: held-out loss (response tokens)", "step",
                   {"eval loss": m["sft"]["eval_loss_curve"]})
        plot_lines(pics / "ppo_reward_kl.png", "PPO: reward model score and KL to the SFT model", "PPO step",
                   {"score": m["ppo"]["score_curve"], "KL (nats)": m["ppo"]["kl_curve"]})
        samples = self.chat_samples(model, tokenizer, system)
        table = lambda name, keys: markdown_table([{k: m[name].get(k) for k in keys}])
        text = f"""# hf-gpt pipeline report — data: {self.data_name}

| stage | seconds |
|---|---:|
""" + "".join(f"| {name} | {m[name]['seconds']} |\n" for name in ("base", "sft", "reward", "ppo")) + f"""
## 1. Pretraining (next-token cross-entropy)
{table("base", ["steps", "val_bpb_first", "val_bpb_last", "val_loss_last"])}

![bpb](plots/pretrain_bpb.png) ![curves](base/curves.png)

![positional encoding](plots/position_encoding.png)

## 2. SFT (loss on response tokens only)
{table("sft", ["steps", "accuracy_before", "accuracy_after", "stops_at_eos_after"])}

![sft loss](plots/sft_eval_loss.png) ![mask](plots/sft_loss_mask.png)

## 3. Reward model (ranked pairs)
{table("reward", ["steps", "pairwise_accuracy"])}

## 4. PPO (reward = RM score, KL penalty to the SFT model)
{table("ppo", ["steps", "score_first", "score_last", "kl_max"])}

{self.accuracy_table()}

![ppo](plots/ppo_reward_kl.png)

## 5. Talking to the final model (system prompt: "{system}")
{markdown_table(samples)}

![attention](plots/attention.png)
"""
        path = out / "report.md"
        path.write_text(text, encoding="utf-8")
        return path

    def accuracy_table(self) -> str:
        """Held-out exact-match accuracy after each stage (world data only: real data has no checker)."""
        sft = self.metrics["sft"]
        if sft.get("accuracy_after") is None:
            return ""
        stages = {"base": (sft, "before"), "sft": (sft, "after"), "ppo": (self.metrics["ppo"], "after")}
        rows = [{"model": name, "greedy": m.get(f"accuracy_{when}"),
                 "sampled (τ = 1)": m.get(f"accuracy_sampled_{when}"), "stops at eos": m.get(f"stops_at_eos_{when}")}
                for name, (m, when) in stages.items()]
        return ("Exact-match accuracy on held-out questions (the one right sentence, then eos). Most demonstrations "
                "ramble on after the answer, so SFT does too; the raters' pairs prefer one sentence, and PPO moves "
                "the model there.\n\n" + markdown_table(rows))

    @torch.no_grad()
    def chat_samples(self, model, tokenizer, system: str) -> list[dict]:
        """Low temperature for facts, high for variety: distinct answers over 10 samples at τ = 0.2 vs 1.0."""
        rows = []
        for question in ("What is the capital of Korea?", "대한민국의 수도는 어디입니까?", "What is 3 plus 4?"):
            prompt = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"]
            row = {"question": question}
            for tau in (0.2, 1.0):
                torch.manual_seed(0)
                out = model.generate(ids.repeat(10, 1), do_sample=True, temperature=tau, top_p=1.0, top_k=0,
                                     max_new_tokens=24, pad_token_id=tokenizer.pad_token_id)
                answers = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
                row[f"τ={tau}: first answer"] = answers[0]
                row[f"τ={tau}: distinct of 10"] = len(set(answers))
            rows.append(row)
        return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="world", help="world (default, offline), english, korean, or three sources "
                        "PRETRAIN,SFT,PREFERENCES, each a local file or a Hub dataset name")
    parser.add_argument("--scale", default="demo", choices=sorted(SCALES))
    parser.add_argument("--output-dir", type=Path, default=None, help="default runs/<data>")
    parser.add_argument("--fresh", action="store_true", help="redo finished stages")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every stage (the data stay the same)")
    args = parser.parse_args(argv)
    out = args.output_dir or Path("runs") / ("custom" if "," in args.data else args.data)
    start = time.perf_counter()
    try:
        metrics = Pipeline(out, args.data, SCALES[args.scale], args.fresh, args.seed).run()
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"\n=== hf-gpt demo ({args.data}) done in {time.perf_counter() - start:.0f} s: {out / 'report.md'} ===")
    for name, values in metrics.items():
        print(name, {k: v for k, v in values.items() if not k.endswith("curve")})


if __name__ == "__main__":
    main()
