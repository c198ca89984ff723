"""TRL's other alignment methods on the same reward model and data, to compare with our PPO.

- GRPO and RLOO (TRL 1.x): reward = our frozen reward model (and/or reward functions), β > 0 for a KL penalty;
  the advantage comes from a group of samples per prompt instead of a value model.
- DPO: no reward model at all; the preference pairs train the policy directly against the frozen SFT model.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from .recipe_utils import multi_process_on_cpu
from .reward import load_rows, prepare_preferences, text_to_messages


def import_reward_function(path: str) -> Callable:
    """`package.module:function` or `package.module.function` → the function f(prompts, completions, **kw)."""
    module, _, name = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"Cannot import reward function {path!r}: {err}. Use 'package.module:function'.") from None


@dataclass
class _Common:
    model_name_or_path: str | None = field(default=None, metadata={"help": "The SFT folder or Hub id."})
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model folder (GRPO/RLOO)."})
    reward_functions: list[str] | None = field(default=None, metadata={"help": "Dotted paths of reward functions."})
    data_files: list[str] | None = field(default=None, metadata={"help": "Local .jsonl files."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset."})
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to use."})
    max_rows: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    system_prompt: str | None = field(default=None, metadata={"help": "System message added to every prompt."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPUs); TRL's default is True."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations (TRL: True)."})


@dataclass
class GRPORecipeConfig(_Common, GRPOConfig):
    beta: float = field(default=0.05, metadata={"help": "KL coefficient (> 0: penalise drift from the SFT model)."})
    report_to: str | list[str] = field(default="none", metadata={"help": "Loggers."})

    def __post_init__(self):
        self.use_cpu = self.use_cpu or multi_process_on_cpu()
        super().__post_init__()


@dataclass
class RLOORecipeConfig(_Common, RLOOConfig):
    beta: float = field(default=0.05, metadata={"help": "KL coefficient (> 0: penalise drift from the SFT model)."})
    report_to: str | list[str] = field(default="none", metadata={"help": "Loggers."})

    def __post_init__(self):
        self.use_cpu = self.use_cpu or multi_process_on_cpu()
        super().__post_init__()


@dataclass
class DPORecipeConfig(_Common, DPOConfig):
    report_to: str | list[str] = field(default="none", metadata={"help": "Loggers."})

    def __post_init__(self):
        self.use_cpu = self.use_cpu or multi_process_on_cpu()
        super().__post_init__()


def _prompts(args) -> "Dataset":  # noqa: F821
    rows = load_rows(args.data_files, args.dataset_name, args.dataset_config, args.dataset_split, args.max_rows)
    if "prompt" not in rows.column_names:
        raise ValueError(f"The data has columns {rows.column_names}; a 'prompt' column is needed.")

    def to_chat(row):
        messages = row["prompt"] if isinstance(row["prompt"], list) else text_to_messages(row["prompt"])
        if args.system_prompt:
            messages = [{"role": "system", "content": args.system_prompt}, *messages]
        return {"prompt": messages}

    return rows.map(to_chat, remove_columns=rows.column_names)


def _rewards(args) -> list:
    rewards = [import_reward_function(p) for p in args.reward_functions or []]
    if args.reward_model_path:
        rewards.insert(0, AutoModelForSequenceClassification.from_pretrained(
            args.reward_model_path, num_labels=1, trust_remote_code=True))
    if not rewards:
        raise ValueError("Give reward_model_path and/or reward_functions.")
    return rewards


def _online(trainer_cls, args):
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, trust_remote_code=True)
    rewards = _rewards(args)
    reward_tokenizers = [tokenizer if not callable(r) or hasattr(r, "config") else None for r in rewards]
    trainer = trainer_cls(model=model, reward_funcs=rewards, args=args, train_dataset=_prompts(args),
                          processing_class=tokenizer, reward_processing_classes=reward_tokenizers)
    trainer.train()
    trainer.save_model(args.output_dir)
    return trainer


def grpo(args: GRPORecipeConfig) -> GRPOTrainer:
    return _online(GRPOTrainer, args)


def rloo(args: RLOORecipeConfig) -> RLOOTrainer:
    return _online(RLOOTrainer, args)


def dpo(args: DPORecipeConfig) -> DPOTrainer:
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, trust_remote_code=True)
    rows = load_rows(args.data_files, args.dataset_name, args.dataset_config, args.dataset_split, args.max_rows)
    pairs, _ = prepare_preferences(rows, tokenizer, args.max_length or model.config.max_position_embeddings)
    trainer = DPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(args.output_dir)
    return trainer
