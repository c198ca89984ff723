"""TRL's other alignment methods on the same reward model and data, to compare with our PPO.

- GRPO and RLOO (TRL 1.x): reward = our frozen reward model (and/or reward functions), β > 0 for a KL penalty;
  the advantage comes from a group of samples per prompt instead of a value model.
- DPO: no reward model at all; the preference pairs train the policy directly against the frozen SFT model.
"""

from dataclasses import dataclass, field

from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from .chat import prompt_to_messages, prompts_that_fit
from .data import load_rows
from .loading import load_reward_function, load_score_model
from .reward import prepare_preferences
from .stage import ChatConfig, Stage, fit_max_length, load_starting_model
from .throughput import with_throughput


@dataclass
class OnlineRLConfig(ChatConfig):
    """What GRPO and RLOO add: where rewards come from, and what to do with prompts that leave no room to answer."""

    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model folder."})
    reward_functions: list[str] | None = field(default=None, metadata={"help": "Dotted paths of reward functions."})
    drop_long_prompts: bool = field(default=False, metadata={"help": "Drop (and count) prompts with no room for the "
                                                                     "completion instead of failing."})
    beta: float = field(default=0.05, metadata={"help": "KL coefficient (> 0: penalise drift from the SFT model)."})


@dataclass
class GRPORecipeConfig(OnlineRLConfig, GRPOConfig):
    """TRL's GRPOConfig plus our data, model and reward fields."""


@dataclass
class RLOORecipeConfig(OnlineRLConfig, RLOOConfig):
    """TRL's RLOOConfig plus our data, model and reward fields."""


@dataclass
class DPORecipeConfig(ChatConfig, DPOConfig):
    """TRL's DPOConfig plus our data and model fields."""


class AlignmentStage(Stage):
    """GRPO, RLOO and DPO: the summary keeps the last logged reward and loss."""

    def evaluate(self, trainer) -> dict:
        last = next((h for h in reversed(trainer.state.log_history) if "loss" in h or "reward" in h), {})
        return {k: last[k] for k in ("reward", "loss") if k in last}


class OnlineRL(AlignmentStage):
    """GRPO or RLOO: sample completions of the prompts, score them, push the policy towards the better ones."""

    def __init__(self, args, trainer_class: type, name: str):
        super().__init__(args)
        self.trainer_class, self.name, self.title = trainer_class, name, name.upper()

    def build(self, checkpoint: str | None):
        args = self.args
        tokenizer, model = load_starting_model(args, AutoModelForCausalLM, "the SFT folder or Hub id")
        rewards = reward_sources(args)
        reward_tokenizers = [tokenizer if not callable(r) or hasattr(r, "config") else None for r in rewards]
        prompts = chat_prompts(args, tokenizer, model.config.max_position_embeddings)
        return with_throughput(self.trainer_class)(model=model, reward_funcs=rewards, args=args, train_dataset=prompts,
                                                   processing_class=tokenizer,
                                                   reward_processing_classes=reward_tokenizers)


class DirectPreference(AlignmentStage):
    """DPO: the preference pairs train the policy directly against the frozen SFT model."""

    name, title = "dpo", "DPO"

    def build(self, checkpoint: str | None) -> DPOTrainer:
        args = self.args
        tokenizer, model = load_starting_model(args, AutoModelForCausalLM, "the SFT folder or Hub id")
        pairs, _ = prepare_preferences(load_rows(args), tokenizer, fit_max_length(args, model), args.system_prompt)
        return with_throughput(DPOTrainer)(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)


def chat_prompts(args: OnlineRLConfig, tokenizer, context: int) -> Dataset:
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


def reward_sources(args: OnlineRLConfig) -> list:
    rewards = [load_reward_function(p) for p in args.reward_functions or []]
    if args.reward_model_path:
        rewards.insert(0, load_score_model(args.reward_model_path, "reward model", args.trust_remote_code))
    if not rewards:
        raise ValueError("Give reward_model_path and/or reward_functions.")
    return rewards


def grpo(args: GRPORecipeConfig, resume_from_checkpoint: str | bool = True) -> GRPOTrainer:
    return OnlineRL(args, GRPOTrainer, "grpo").run(resume_from_checkpoint)


def rloo(args: RLOORecipeConfig, resume_from_checkpoint: str | bool = True) -> RLOOTrainer:
    return OnlineRL(args, RLOOTrainer, "rloo").run(resume_from_checkpoint)


def dpo(args: DPORecipeConfig, resume_from_checkpoint: str | bool = True) -> DPOTrainer:
    return DirectPreference(args).run(resume_from_checkpoint)
