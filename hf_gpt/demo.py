"""`make demo`: the whole pipeline in one command — tokenizer → pretraining → SFT → reward model → PPO → chat.

The default world (`hf_gpt.world`) is generated here, offline, and has checkable answers, so every stage shows a
measured gain. `--data english|korean` runs the same stages on the real data sets in ../shared/data.
The run writes runs/<name>/report.md with a table per stage and PNG plots; a second run reuses finished stages
(`--fresh` redoes them).
"""

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from . import world
from .cli import Parser
from .data import BUILDERS, write_jsonl
from .generation import complete, fit_conversation
from .hub import read_summary
from .loading import load_config, load_model_and_tokenizer, load_tokenizer
from .ppo import PPOConfig, ppo
from .pretrain import PretrainConfig, pretrain
from .progress import clock
from .recipe_utils import run_cli
from .report import baseline_rows, markdown_table, write_report
from .reward import RewardRecipeConfig, train_reward_model
from .run_folder import write_json
from .sft import SFTRecipeConfig, sft

# The real data sets live beside the repo the demo runs from (the working directory), not beside the installed package.
SHARED_ENV = "HF_GPT_SHARED_DATA"


def shared_data() -> Path:
    return Path(os.environ.get(SHARED_ENV, "../shared/data"))


@dataclass
class Scale:
    """How much each stage trains. The world's are step counts; real data set epochs (steps follow the data size)."""

    documents: int = 3000
    pretrain_steps: int = 2000
    sft_rows: int | None = 2000
    sft_steps: int = 1200  # a quarter of the rows are blocks of replayed text (sft_replay_share)
    preference_rows: int | None = 4000
    reward_steps: int = 900
    reward_learning_rate: float = 3e-4
    ppo_steps: int = 40
    ppo_learning_rate: float = 1e-5
    eval_rows: int | None = None  # held-out questions (None: all 48) and as many seen ones
    width: int = 128
    layers: int = 4
    vocab_size: int = 1024
    block_size: int = 64
    context: int = 128  # max_position_embeddings: room for SFT, preference pairs and PPO replies
    pretrain_epochs: float | None = None  # set: train this many epochs (steps from the data size), not *_steps
    sft_epochs: float | None = None  # set: also keep the checkpoint with the best held-out loss
    reward_epochs: float | None = None
    # The world's SFT also replays blocks of pretraining text (this share of its rows): held-out questions are answered
    # from what the base model knew, alone and in a conversation (real data: none, their recorded runs did not).
    sft_replay_share: float | None = 0.25
    sft_baseline: bool = False  # also fine-tune an untrained copy of the base model: does pretraining help?
    ppo_needs_reward_model: bool = True  # skip PPO when the reward model does not beat chance


SCALES = {"demo": Scale(),
          # CI's scale: every stage still moves the way tests/test_demo.py asserts.
          "tiny": Scale(documents=3000, pretrain_steps=450, sft_rows=2000, sft_steps=600, preference_rows=2000,
                        reward_steps=180, ppo_steps=40)}


@dataclass
class Preset:
    """Real data in ../shared/data: files per stage, and how much to train on them."""

    pretrain: list[str]
    sft: list[str]
    preferences: list[str] | None
    scale: Scale
    no_preferences: str = ""  # why there is no reward model / PPO
    questions: tuple[str, ...] = ()  # asked to the final model in the report


PRESETS = {
    "english": Preset(["tinystories/tinystories_valid_head_paragraphs.jsonl"], ["sft_dolly_2k/dolly_2k.jsonl"],
                      ["pref_hh_rlhf_harmless_test/harmless_base_test.jsonl"],
                      Scale(pretrain_epochs=8, sft_epochs=3, reward_epochs=2, sft_rows=None, preference_rows=None,
                            context=256, sft_baseline=True, sft_replay_share=None),
                      questions=("Tell me a story about a cat.", "What is the capital of France?",
                                 "Give me three tips for sleeping well.")),
    "korean": Preset(["ko_klue_sentences/klue_dev_sentences.jsonl"], ["sft_ko_chatbot/chatbot_qa.jsonl"], None,
                     Scale(pretrain_epochs=4, sft_epochs=2, reward_epochs=2, sft_rows=None, preference_rows=None,
                           vocab_size=2048, sft_baseline=True, sft_replay_share=None),
                     no_preferences="../shared/data has no Korean preference pairs: ranking Korean replies with "
                     "English pairs (pref_hh_rlhf) would measure nothing, so the reward model and PPO are skipped. "
                     "Give three sources (DATA=PRETRAIN,SFT,PREFERENCES) with Korean pairs to run them.",
                     questions=("안녕하세요!", "오늘 너무 피곤해.", "주말에 뭐 하면 좋을까?")),
}


STAGES_DATA = ("pretrain", "sft", "preferences")


def world_data(folder: Path, scale: Scale) -> dict[str, dict]:
    """The world's four training files, each a one-file data set folder (`<stage>/train.jsonl`, which
    `load_dataset(folder)` and TRL's `--dataset_name folder` read); no held-out subject is in the SFT, preference or
    PPO files."""
    rows = {"pretrain": [{"text": t} for t in world.pretraining_documents(scale.documents)],
            "sft": world.sft_rows(scale.sft_rows), "preferences": world.preference_rows(scale.preference_rows),
            "ppo": world.ppo_prompts(400)}
    files = {stage: write_jsonl(folder / stage / "train.jsonl", stage_rows) for stage, stage_rows in rows.items()}
    return {stage: {"data_files": [path]} for stage, path in files.items()}


def data_source(spec: str) -> dict:
    """One stage's data as config fields: a local file → data_files; a Hub name, or a local dataset folder (which
    `load_dataset` reads the same way) → dataset_name."""
    if Path(spec).is_file():
        return {"data_files": [spec]}
    if Path(spec).is_dir():
        return {"dataset_name": spec}
    if spec.endswith(tuple(BUILDERS)) or spec.startswith((".", "/")):
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
    preset = PRESETS[name]
    data = {}
    for stage, group in zip(STAGES_DATA, (preset.pretrain, preset.sft, preset.preferences)):
        if group is None:
            continue
        paths = [str(shared_data() / p) for p in group]
        for path in paths:
            if not Path(path).exists():
                raise FileNotFoundError(f"{path} is missing: the {name} preset reads ../shared/data beside the repo "
                                        f"(run from the repo's root) or the folder {SHARED_ENV} names.")
        data[stage] = {"data_files": paths}
    return data


def is_right(answer: str, right: str, eos: str) -> bool:
    """Exact match: the one right sentence, then eos (text after eos, such as padding, is ignored)."""
    reply, stopped, _ = answer.partition(eos)
    return bool(stopped) and reply.strip() == right


def grade(answer: str, right: str, eos: str) -> dict[str, bool]:
    """Exact (the one right sentence, then eos); right fact first (the reply starts with it: the knowledge, whatever
    follows); one sentence (stops at eos after a single sentence: the format the raters prefer)."""
    reply, stopped, _ = answer.partition(eos)
    reply = reply.strip()
    one_sentence = bool(stopped) and reply.count(".") == 1 and reply.endswith(".")
    return {"exact": is_right(answer, right, eos), "right_fact": reply.startswith(right),
            "one_sentence": one_sentence, "stops_at_eos": bool(stopped)}


def chat_accuracy(folder: Path, rows: list[dict], samples: int = 4) -> dict[str, dict[str, float]]:
    """Per split ("seen", "held_out") of `rows`: greedy scores (`grade`) and sampled exact match (τ = 1, `samples`
    answers each: what PPO optimises), overall and per language. Each row carries its own system prompt or none."""
    tokenizer, model = load_model_and_tokenizer(AutoModelForCausalLM, folder)
    model.eval()
    prompts = [world.chat_prompt(r["prompt"], r["system"]) for r in rows]
    eos = tokenizer.eos_token
    greedy = complete(model, tokenizer, prompts, 32, skip_special_tokens=False, do_sample=False)  # eos kept
    sampled = complete(model, tokenizer, prompts, 32, skip_special_tokens=False, do_sample=True, temperature=1.0,
                       top_p=1.0, top_k=0, num_return_sequences=samples)
    results: dict[str, dict[str, float]] = {}
    for split in dict.fromkeys(r["split"] for r in rows):
        picked = [i for i, r in enumerate(rows) if r["split"] == split]
        scores = {"n": len(picked)}
        for language in ("", "en", "ko"):
            chosen = [i for i in picked if rows[i]["language"] == language or not language]
            suffix = f"_{language}" if language else ""
            graded = [grade(greedy[i], rows[i]["answer"], eos) for i in chosen]
            for key in graded[0] if not language else ("exact",):
                scores[f"{key}{suffix}"] = sum(g[key] for g in graded) / len(graded)
            scores[f"sampled{suffix}"] = sum(is_right(sampled[i * samples + j], rows[i]["answer"], eos)
                                             for i in chosen for j in range(samples)) / (len(chosen) * samples)
        results[split] = scores
    return results


def conversation_accuracy(folder: Path, rows: list[dict]) -> dict:
    """The questions asked alone, then one after another in one conversation as `hf-gpt chat` sends them (the oldest
    turns dropped when the context is full): the share answered with the right fact first each way, overall and per
    split, and how many were right only alone (`lost`) or only in the conversation (`gained`)."""
    tokenizer, model = load_model_and_tokenizer(AutoModelForCausalLM, folder)
    ask = lambda messages: complete(model.eval(), tokenizer, [messages], 32, do_sample=False)[0].strip()
    alone = [ask([{"role": "user", "content": r["prompt"]}]).startswith(r["answer"]) for r in rows]
    messages, together = [], []
    for row in rows:
        messages, _ = fit_conversation(tokenizer, [*messages, {"role": "user", "content": row["prompt"]}],
                                       model.config.max_position_embeddings, 32)
        reply = ask(messages)
        together.append(reply.startswith(row["answer"]))
        messages.append({"role": "assistant", "content": reply})

    def shares(picked: list[int]) -> dict:
        return {"questions": len(picked), "alone": sum(alone[i] for i in picked) / len(picked),
                "in_conversation": sum(together[i] for i in picked) / len(picked),
                "lost": sum(alone[i] and not together[i] for i in picked),
                "gained": sum(together[i] and not alone[i] for i in picked)}

    splits = dict.fromkeys(r["split"] for r in rows)
    return {**shares(list(range(len(rows)))),
            "by_split": {s: shares([i for i, r in enumerate(rows) if r["split"] == s]) for s in splits}}


def fact_recall(folder: Path, rows: list[dict]) -> dict[str, float]:
    """Does a (base) model know each fact as plain text? Greedy continuation of the answer's start ("The capital of
    Norway is" → " Oslo.") per split: the knowledge that pretraining put in, without any chat format."""
    tokenizer, model = load_model_and_tokenizer(AutoModelForCausalLM, folder)
    model.eval()
    starts, ends = zip(*(r["answer"].rsplit(" ", 1) for r in rows))
    continued = complete(model, tokenizer, list(starts), 8, do_sample=False)
    right = [c.startswith(" " + end) for c, end in zip(continued, ends)]
    splits = dict.fromkeys(r["split"] for r in rows)
    return {split: sum(ok for ok, r in zip(right, rows) if r["split"] == split)
            / sum(r["split"] == split for r in rows) for split in splits}


def world_evaluation(scale: Scale) -> list[dict]:
    """The held-out questions (every one, none in any training row) and as many seen ones, for comparison."""
    held_out = world.eval_rows("held_out", scale.eval_rows)
    return held_out + world.eval_rows("seen", len(held_out))


# ------------------------------------------------------------------ the stages, each runnable alone


def pipeline_run_args(seed: int) -> dict:
    # The pipeline decides whether a stage is reused (stage.json) or redone; a redone stage trains afresh into its
    # folder, through the run folder's owner (which checks every input before it removes anything).
    return dict(report_to="none", disable_tqdm=True, save_strategy="no", seed=seed, overwrite_output_dir=True)


# Keep the checkpoint with the best held-out figure: a checkpoint at every evaluation, the best one reloaded at the end.
KEEP_BEST = dict(save_strategy="steps", save_total_limit=1, load_best_model_at_end=True)


def training_length(steps: int, epochs: float | None, evaluations: int) -> dict:
    """Train `steps`, or `epochs` (the steps follow from the data size), evaluating `evaluations` times."""
    every = max(steps // evaluations, 1) if epochs is None else 1 / evaluations
    length = dict(max_steps=steps) if epochs is None else dict(max_steps=-1, num_train_epochs=epochs)
    return {**length, "eval_steps": every, "save_steps": every}  # saves are kept only with KEEP_BEST


def pretrain_stage(folder: Path, data: dict, scale: Scale, seed: int = 0) -> dict:
    """Stage 1: a byte-level BPE and a small GPT trained on the pretraining text; validation bits per byte next to
    a unigram and a bigram table of the same tokens."""
    trainer = pretrain(PretrainConfig(
        output_dir=str(folder), **data, vocab_size=scale.vocab_size, block_size=scale.block_size,
        max_position_embeddings=max(scale.context, scale.block_size), n_layer=scale.layers, n_head=4,
        n_embd=scale.width, per_device_train_batch_size=16, learning_rate=2e-3,
        **training_length(scale.pretrain_steps, scale.pretrain_epochs, 5),
        logging_steps=10, sample_prompts=["The capital of Korea is", "대한민국의 수도는"],
        **{**pipeline_run_args(seed), **KEEP_BEST}, metric_for_best_model="bpb", greater_is_better=False))
    history = trainer.state.log_history
    trained = next(i for i, h in enumerate(history) if "train_runtime" in h)  # then the kept model's evaluation
    evals = [h for h in history[:trained] if "eval_bpb" in h]
    best = min(evals, key=lambda h: h["eval_bpb"])
    return {**read_summary(folder)["metrics"], "steps": trainer.state.global_step,
            "val_bpb_first": evals[0]["eval_bpb"], "val_bpb_last": evals[-1]["eval_bpb"],
            "val_bpb_min": best["eval_bpb"], "best_step": best["step"],
            "overfits_after": best["step"] if best is not evals[-1] else None,  # the kept model is the best step's
            "val_loss_last": evals[-1]["eval_loss"],
            "bpb_curve": [(h["step"], h["eval_bpb"]) for h in evals]}


def sft_stage(folder: Path, base: Path, data: dict, scale: Scale, seed: int = 0, evals: list[dict] = (),
              system_prompt: str | None = None, accuracy_before: bool = True, replay: dict | None = None) -> dict:
    """Stage 2: SFT from the base model (loss on response tokens only, and on the documents of `replay` when given);
    accuracy before and after when checkable. With epochs, the checkpoint with the lowest held-out loss is kept."""
    before = chat_accuracy(base, evals) if evals and accuracy_before else None
    best = {**KEEP_BEST, "metric_for_best_model": "eval_loss"} if scale.sft_epochs else {}
    replayed = dict(replay_files=replay["data_files"], replay_share=scale.sft_replay_share) if replay else {}
    trainer = sft(SFTRecipeConfig(
        output_dir=str(folder), model_name_or_path=str(base), **data, system_prompt=system_prompt,
        per_device_train_batch_size=16, learning_rate=1e-3, **training_length(scale.sft_steps, scale.sft_epochs, 8),
        logging_steps=10, max_rows=scale.sft_rows, eval_on_start=True, lr_scheduler_type="cosine",
        **replayed, **{**pipeline_run_args(seed), **best}))
    history = trainer.state.log_history
    losses = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    metrics = {"steps": trainer.state.global_step, "epochs": round(trainer.state.epoch, 2),
               "eval_loss": read_summary(folder)["metrics"]["eval_loss"], "eval_loss_curve": losses}
    if evals:
        metrics["accuracy"] = {"sft": chat_accuracy(folder, evals)}
        if before is not None:
            metrics["accuracy"] = {"base": before, **metrics["accuracy"]}
            metrics["fact_recall_base"] = fact_recall(base, evals)
    return metrics


def sft_scratch_stage(folder: Path, base: Path, data: dict, scale: Scale, seed: int = 0,
                      evals: list[dict] = ()) -> dict:
    """The SFT baseline: the same fine-tuning from random weights of the base model's shape (no pretraining)."""
    untrained = folder.parent / "untrained"
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(load_config(base)).save_pretrained(untrained)
    load_tokenizer(base).save_pretrained(untrained)
    metrics = sft_stage(folder, untrained, data, scale, seed, evals, accuracy_before=False)
    shutil.rmtree(untrained)
    if "accuracy" in metrics:
        metrics["accuracy"] = {"sft without pretraining": metrics["accuracy"]["sft"]}
    return metrics


def reward_stage(folder: Path, sft_folder: Path, data: dict, scale: Scale, seed: int = 0,
                 system_prompt: str | None = None) -> dict:
    """Stage 3a: a reward model from the SFT model, trained on ranked pairs; held-out pairwise accuracy vs chance."""
    train_reward_model(RewardRecipeConfig(
        output_dir=str(folder), model_name_or_path=str(sft_folder), **data, max_rows=scale.preference_rows,
        system_prompt=system_prompt, per_device_train_batch_size=16, learning_rate=scale.reward_learning_rate,
        **training_length(scale.reward_steps, scale.reward_epochs, 3), logging_steps=10, lr_scheduler_type="cosine",
        **pipeline_run_args(seed)))
    summary = read_summary(folder)
    metrics = summary["metrics"]
    return {"steps": summary["steps"], "epochs": round(metrics["epochs"], 2),
            **{k: metrics[k] for k in ("pairwise_accuracy", "eval_pairs", "standard_error", "chance_bound",
                                       "beats_baseline", "length_rule_prefers", "length_rule_accuracy")}}


def ppo_stage(folder: Path, sft_folder: Path, reward_folder: Path, prompts: dict, scale: Scale, seed: int = 0,
              evals: list[dict] = (), system_prompt: str | None = None, drop_long_prompts: bool = False) -> dict:
    """Stage 3b: PPO from the SFT model, reward = the RM's score alone (no checker), KL penalty to the SFT model;
    the score change is a gain only when it beats its step-to-step noise."""
    trainer = ppo(PPOConfig(
        output_dir=str(folder), model_name_or_path=str(sft_folder), reward_model_path=str(reward_folder),
        **prompts, system_prompt=system_prompt, max_rows=400, drop_long_prompts=drop_long_prompts,
        max_steps=scale.ppo_steps, per_device_train_batch_size=16, response_length=32, temperature=0.7,
        num_ppo_epochs=2, learning_rate=scale.ppo_learning_rate, kl_coef=0.05, sample_every=5,
        **pipeline_run_args(seed)))
    history = trainer.log_history
    metrics = {"steps": len(history), **read_summary(folder)["metrics"],
               "score_curve": [(h["step"], h["objective/scores"]) for h in history],
               "kl_curve": [(h["step"], h["objective/kl"]) for h in history]}
    if evals:
        metrics["accuracy"] = {"ppo": chat_accuracy(folder, evals)}
        metrics["conversation"] = conversation_accuracy(folder, evals)
    return metrics


# hf-gpt's lm-evaluation-harness tasks per saved model (hf_gpt/lm_eval_tasks): the world's facts on the base model,
# its chat questions on the chat models; the Korean preset's base model on NSMC and KLUE-NLI.
LM_EVAL_PLANS = {"world": {"base": ["world_facts"], "sft": ["world_chat"], "ppo": ["world_chat"]},
                 "korean": {"base": ["nsmc_ko", "klue_nli_ko"]}}


def lm_eval_stage(out: Path, plan: dict[str, list[str]]) -> dict:
    """Stage 5: the saved models scored by lm-evaluation-harness (`hf-gpt eval`), results in each folder's
    lm_eval_results.json and model card."""
    from .eval_harness import evaluate, quiet_harness

    quiet_harness()
    return {model: evaluate(str(out / model), tasks)["tasks"] for model, tasks in plan.items()
            if (out / model / "config.json").is_file()}


def lm_eval_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


class Pipeline:
    def __init__(self, out: Path, data: str, scale: Scale, fresh: bool, seed: int = 0, stages: int | None = None):
        self.out, self.data_name, self.scale, self.fresh, self.seed = out, data, scale, fresh, seed
        self.metrics: dict[str, dict] = {}
        # The stages it will announce as "i of n": pretraining, SFT (and SFT from scratch), reward model, PPO, and
        # lm-evaluation-harness where hf-gpt ships tasks for the data.
        self.lm_eval = LM_EVAL_PLANS.get(data) if lm_eval_available() else None
        self.stages, self.announced = stages or 4 + scale.sft_baseline + bool(self.lm_eval), 0

    def _heading(self, name: str) -> str:
        self.announced += 1
        return f"[stage {self.announced}/{self.stages}: {name}]"

    def stage(self, name: str, run: Callable[[Path], dict]) -> dict:
        """Run a stage into out/<name>, or reuse it if it finished before with the same seed."""
        folder, done = self.out / name, self.out / name / "stage.json"
        before = json.loads(done.read_text()) if done.exists() and not self.fresh else None
        if before is not None and before.get("seed", 0) == self.seed:
            print(f"{self._heading(name)} reusing {folder} (finished before; --fresh to redo)")
            self.metrics[name] = before
            return before
        done.unlink(missing_ok=True)
        print(f"\n{self._heading(name)} ..." + (f" (seed {before.get('seed', 0)} → {self.seed}: redone)" if before
                                               else ""), flush=True)
        start = time.perf_counter()
        metrics = {**run(folder), "seed": self.seed, "seconds": round(time.perf_counter() - start, 1)}
        folder.mkdir(parents=True, exist_ok=True)  # a stage that only reads (lm_eval) has written nothing there
        write_json(done, metrics)
        self.metrics[name] = metrics
        return metrics

    def skip(self, name: str, reason: str) -> None:
        print(f"\n{self._heading(name)} skipped: {reason}")
        self.metrics[name] = {"skipped": reason}

    def run(self) -> dict[str, dict]:
        scale, out, seed, world_mode = self.scale, self.out, self.seed, self.data_name == "world"
        data = world_data(out / "data", scale) if world_mode else preset_data(self.data_name)
        evals = world_evaluation(scale) if world_mode else []
        # World rows carry their own system prompts (varied or none); real data get none added.
        self.stage("base", lambda folder: pretrain_stage(folder, data["pretrain"], scale, seed))
        replay = data["pretrain"] if world_mode and scale.sft_replay_share else None
        self.stage("sft", lambda folder: sft_stage(folder, out / "base", data["sft"], scale, seed, evals,
                                                   replay=replay))
        if scale.sft_baseline:
            self.stage("sft_scratch",
                       lambda folder: sft_scratch_stage(folder, out / "base", data["sft"], scale, seed, evals))
        if "preferences" not in data:
            reason = PRESETS[self.data_name].no_preferences
            self.skip("reward", reason)
            self.skip("ppo", reason)
        elif not self.stage("reward", lambda folder: reward_stage(folder, out / "sft", data["preferences"], scale, seed)
                            ).get("beats_baseline", True) and scale.ppo_needs_reward_model:
            self.skip("ppo", "the reward model does not beat chance, so PPO would maximise noise")
        else:  # PPO reads its own prompts (world) or the prompts of the preference data (real data).
            prompts = data.get("ppo", data["preferences"])
            self.stage("ppo", lambda folder: ppo_stage(folder, out / "sft", out / "reward", prompts, scale, seed, evals,
                                                       drop_long_prompts=not world_mode))
        if self.lm_eval:
            self.stage("lm_eval", lambda folder: lm_eval_stage(out, self.lm_eval))
        questions = PRESETS[self.data_name].questions if self.data_name in PRESETS else ()
        write_report(out, self.data_name, self.metrics, *(questions and [questions]))
        return self.metrics


def scale_of(data: str, scale: str | None) -> Scale:
    """A preset's own epochs, else the named scale (the world's, or any three sources; default demo)."""
    if data in PRESETS:
        if scale is not None:
            raise ValueError(f"--scale {scale} does not apply to the {data} preset, which trains its own epochs "
                             "(sized by its data): leave --scale out.")
        return PRESETS[data].scale
    return SCALES[scale or "demo"]


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="world", help="world (default, offline), english, korean, or three sources "
                        "PRETRAIN,SFT,PREFERENCES, each a local file or a Hub dataset name")
    parser.add_argument("--scale", default=None, choices=sorted(SCALES),
                        help="step counts for the world or three named sources (default demo); a preset (english, "
                        "korean) trains its own epochs")
    parser.add_argument("--output-dir", type=Path, default=None, help="default runs/<data>")
    parser.add_argument("--fresh", action="store_true", help="redo finished stages")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every stage (the data stay the same)")
    args = parser.parse_args(argv)
    out = args.output_dir or Path("runs") / ("custom" if "," in args.data else args.data)
    start = time.perf_counter()
    metrics = {}
    run_cli(lambda: metrics.update(Pipeline(out, args.data, scale_of(args.data, args.scale), args.fresh,
                                            args.seed).run()))
    print(f"\n=== hf-gpt demo ({args.data}) done in {clock(time.perf_counter() - start)}: {out / 'report.md'} ===\n")
    print(markdown_table([{"stage": name, "time": clock(values.get("seconds")) if "seconds" in values else "skipped"}
                          for name, values in metrics.items()]) + "\n")
    print(markdown_table(baseline_rows(metrics)))


if __name__ == "__main__":
    main()
