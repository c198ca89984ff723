"""Stage 3a, the reward model: a score head on the SFT model, trained on ranked pairs so r(chosen) > r(rejected).

Loss (Bradley-Terry): -log σ(r(x, y_chosen) - r(x, y_rejected)), through TRL's `RewardTrainer`.

Design choices:
- The model is `HfGptForSequenceClassification(num_labels=1)` initialised from the SFT folder; its score is read at
  the last real token, which our chat template makes the eos ending the reply.
- Pairs are rendered by the chat template (`render_for_reward`), the same text PPO scores later: a reward model
  that saw one layout in training and another at scoring time would be judging something it never learned.
"""

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer

from .baselines import against_chance, length_rule
from .chat import defuse, measuring_lengths, normalize_messages, prompt_length, prompt_to_messages
from .data import convert_rows, load_rows
from .generation import fit_conversation
from .run_folder import write_json
from .stage import ChatConfig, Stage, fit_max_length, hold_out, load_starting_model
from .throughput import with_throughput

logger = logging.getLogger(__name__)


@dataclass
class RewardRecipeConfig(ChatConfig, RewardConfig):
    """TRL's RewardConfig plus data fields (every one settable from YAML)."""

    validation_fraction: float = field(default=0.1, metadata={"help": "Pairs held out for pairwise accuracy."})
    output_dir: str = field(default="runs/reward", metadata={"help": "Where checkpoints and the model go."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate."})
    max_length: int | None = field(default=None, metadata={"help": "Context (default: the model's)."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate."})
    eval_steps: float | None = field(default=50, metadata={"help": "Evaluate every N steps."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})


def to_preference(row: dict, system_prompt: str | None = None) -> dict:
    """A {prompt, chosen, rejected} row (text or conversational) → TRL's conversational preference format; a bad row
    raises ValueError naming the field."""
    for name in ("prompt", "chosen", "rejected"):
        if name not in row or row[name] is None:
            raise ValueError(f"field {name!r} is missing")
    prompt = prompt_to_messages(row["prompt"], system_prompt, where="field 'prompt'")
    replies = {}
    for name in ("chosen", "rejected"):
        value = row[name]
        if isinstance(value, list):  # conversational: the reply is the last (assistant) turn
            value = normalize_messages(value, f"field {name!r}")[-1]["content"]
        elif isinstance(value, str):
            value = defuse(value)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"field {name!r} is empty or not a string")
        replies[name] = [{"role": "assistant", "content": value.strip()}]
    if replies["chosen"] == replies["rejected"]:
        raise ValueError("fields 'chosen' and 'rejected' are identical: the pair ranks nothing")
    return {"prompt": prompt, **replies}


def render_for_reward(tokenizer: PreTrainedTokenizerBase, prompt: list[dict], reply: str) -> list[int]:
    """Token ids a reward model scores: prompt + reply through the chat template, ending on the reply's eos."""
    out = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": reply}], return_dict=True)
    return list(out["input_ids"])


def prepare_preferences(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int,
                        system_prompt: str | None = None) -> tuple[Dataset, Counter]:
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"The preference data has columns {dataset.column_names}; missing {missing}. "
                         "Expected {prompt, chosen, rejected}.")

    measuring_lengths(tokenizer)

    def fits(pair: dict) -> tuple[str, str | None] | None:
        # As SFT and the chat do: a dialogue too long loses its oldest turns (shortened in place), so that the pair
        # is ranked on its last exchange rather than dropped.
        prompt = prompt_length(tokenizer, pair["prompt"])
        reply = max(len(render_for_reward(tokenizer, pair["prompt"], pair[k][0]["content"])) - prompt
                    for k in ("chosen", "rejected"))
        pair["prompt"], dropped = fit_conversation(tokenizer, pair["prompt"], max_length, reply)
        longest = (prompt_length(tokenizer, pair["prompt"]) if dropped else prompt) + reply
        if longest > max_length:
            return "dropped: longer than the context", f"{longest} tokens > max_length {max_length}"
        return ("shortened (oldest turns dropped to fit max_length)", None) if dropped else None

    return convert_rows(dataset, lambda row: to_preference(row, system_prompt), fits, "Preference")


def replies(pairs: Dataset) -> list[tuple[str, str]]:
    """(chosen, rejected) reply texts: the last message of each (TRL's trainer prepends the prompt to both)."""
    return [(c[-1]["content"], r[-1]["content"]) for c, r in zip(pairs["chosen"], pairs["rejected"])]


class RewardModelling(Stage):
    """Train the RM, report held-out pairwise accuracy against chance, save it (the accuracy in the card)."""

    name, title = "reward", "reward"

    def build(self, checkpoint: str | None) -> RewardTrainer:
        args = self.args
        tokenizer, model = load_starting_model(args, AutoModelForSequenceClassification, "the SFT folder or Hub id",
                                               num_labels=1)
        pairs, self.report = prepare_preferences(load_rows(args), tokenizer, fit_max_length(args, model),
                                                 args.system_prompt)
        logger.warning("Preference data: %s", dict(self.report))
        train, self.evaluation = hold_out(pairs, args)
        return with_throughput(RewardTrainer)(model=model, args=args, train_dataset=train,
                                              eval_dataset=self.evaluation, processing_class=tokenizer)

    def evaluate(self, trainer: RewardTrainer) -> dict:
        summary = {"data": dict(self.report), "epochs": trainer.state.epoch}
        if self.evaluation is None:
            return {"pairwise_accuracy": None, "eval_loss": None, **summary}
        metrics = trainer.evaluate()
        chance = against_chance(metrics["eval_accuracy"], len(self.evaluation))  # a coin: 0.5 ± 0.5/√n
        return {"pairwise_accuracy": metrics["eval_accuracy"], "eval_loss": metrics["eval_loss"], **summary,
                "eval_pairs": len(self.evaluation),
                **{k: chance[k] for k in ("standard_error", "chance_bound", "beats_baseline")},
                **length_rule(replies(trainer.train_dataset), replies(self.evaluation))}

    def write_files(self, trainer: RewardTrainer, metrics: dict) -> None:
        write_json(Path(self.args.output_dir) / "reward_metrics.json", metrics)


def train_reward_model(args: RewardRecipeConfig, resume_from_checkpoint: str | bool = True) -> RewardTrainer:
    return RewardModelling(args).run(resume_from_checkpoint)
