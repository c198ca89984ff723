"""TRL's other alignment methods on the same reward model and data, to compare with our PPO.

- GRPO and RLOO (TRL 1.x): reward = our frozen reward model (and/or reward functions), β > 0 for a KL penalty;
  the advantage comes from a group of samples per prompt instead of a value model.
- DPO: no reward model at all; the preference pairs train the policy directly against the frozen SFT model.
"""

from dataclasses import dataclass, field

from datasets import Dataset
from transformers import AutoModelForCausalLM, set_seed
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from .chat import prompt_to_messages, prompts_that_fit
from .data import load_rows
from .hub import write_summary
from .loading import load_reward_function, load_score_model
from .recipe_utils import RecipeFields, load_stage
from .reward import prepare_preferences
from .run_folder import RunFolder
from .throughput import with_throughput


@dataclass
class _Common(RecipeFields):
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model folder (GRPO/RLOO)."})
    reward_functions: list[str] | None = field(default=None, metadata={"help": "Dotted paths of reward functions."})
    drop_long_prompts: bool = field(default=False, metadata={"help": "Drop (and count) prompts with no room for the "
                                                                     "completion instead of failing (GRPO/RLOO)."})


@dataclass
class GRPORecipeConfig(_Common, GRPOConfig):
    beta: float = field(default=0.05, metadata={"help": "KL coefficient (> 0: penalise drift from the SFT model)."})


@dataclass
class RLOORecipeConfig(_Common, RLOOConfig):
    beta: float = field(default=0.05, metadata={"help": "KL coefficient (> 0: penalise drift from the SFT model)."})


@dataclass
class DPORecipeConfig(_Common, DPOConfig):
    """TRL's DPOConfig plus our data and model fields."""


def _prompts(args, tokenizer, context: int) -> Dataset:
    """The prompts as chat messages; those with no room for max_completion_length tokens in the context are an error
    naming the row, or dropped and counted with `drop_long_prompts` (as PPO's)."""
    rows = load_rows(args)
    if "prompt" not in rows.column_names:
        raise ValueError(f"The data has columns {rows.column_names}; a 'prompt' column is needed.")
    rows = rows.select(prompts_that_fit(rows["prompt"], tokenizer, context, args.max_completion_length,
                                        args.system_prompt, args.drop_long_prompts))
    if len(rows) == 0:
        raise ValueError(f"No prompt leaves room for {args.max_completion_length} completion tokens in the model's "
                         f"context of {context}: lower max_completion_length or use a longer-context model.")
    return rows.map(lambda row: {"prompt": prompt_to_messages(row["prompt"], args.system_prompt)},
                    remove_columns=rows.column_names)


def _rewards(args) -> list:
    rewards = [load_reward_function(p) for p in args.reward_functions or []]
    if args.reward_model_path:
        rewards.insert(0, load_score_model(args.reward_model_path, "reward model", args.trust_remote_code))
    if not rewards:
        raise ValueError("Give reward_model_path and/or reward_functions.")
    return rewards


def _online(trainer_cls, args, method: str, resume_from_checkpoint: str | bool | None):
    with RunFolder(args, method.upper(), resume_from_checkpoint) as run:
        set_seed(args.seed)
        tokenizer, model = load_stage(args, AutoModelForCausalLM, "the SFT folder or Hub id")
        rewards = _rewards(args)
        reward_tokenizers = [tokenizer if not callable(r) or hasattr(r, "config") else None for r in rewards]
        prompts = _prompts(args, tokenizer, model.config.max_position_embeddings)
        trainer = with_throughput(trainer_cls)(model=model, reward_funcs=rewards, args=args, train_dataset=prompts,
                                               processing_class=tokenizer, reward_processing_classes=reward_tokenizers)
        run.begin()
        run.train(trainer)
        save_aligned(trainer, args, method)
    return trainer


def save_aligned(trainer, args, method: str) -> None:
    """The model, and the summary that marks the folder finished (a rerun then refuses to overwrite it)."""
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        last = next((h for h in reversed(trainer.state.log_history) if "loss" in h or "reward" in h), {})
        write_summary(args.output_dir, method, {k: last.get(k) for k in ("reward", "loss") if k in last},
                      data=args.data_files or args.dataset_name, base_model=args.model_name_or_path,
                      steps=trainer.state.global_step, throughput=trainer.throughput_summary())


def grpo(args: GRPORecipeConfig, resume_from_checkpoint: str | bool = True) -> GRPOTrainer:
    return _online(GRPOTrainer, args, "grpo", resume_from_checkpoint)


def rloo(args: RLOORecipeConfig, resume_from_checkpoint: str | bool = True) -> RLOOTrainer:
    return _online(RLOOTrainer, args, "rloo", resume_from_checkpoint)


def dpo(args: DPORecipeConfig, resume_from_checkpoint: str | bool = True) -> DPOTrainer:
    with RunFolder(args, "DPO", resume_from_checkpoint) as run:
        set_seed(args.seed)
        tokenizer, model = load_stage(args, AutoModelForCausalLM, "the SFT folder or Hub id")
        rows = load_rows(args)
        # TRL's default max_length (1024) may exceed the model's context: pairs longer than the context are dropped.
        args.max_length = min(args.max_length or model.config.max_position_embeddings,
                              model.config.max_position_embeddings)
        pairs, _ = prepare_preferences(rows, tokenizer, args.max_length, args.system_prompt)
        trainer = with_throughput(DPOTrainer)(model=model, args=args, train_dataset=pairs,
                                              processing_class=tokenizer)
        run.begin()
        run.train(trainer)
        save_aligned(trainer, args, "dpo")
    return trainer
