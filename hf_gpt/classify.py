"""Sequence classification with either kind of hf_gpt model on labelled text: an MLM encoder (pooled at the first
token, as BERT's [CLS]) or a GPT decoder (pooled at the last token, which alone has seen the whole text), so the two
compare on one split."""

import random
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, EvalPrediction, TrainingArguments

from .data import load_rows
from .mlm import EncoderTrainer
from .stage import RowsConfig, Stage, final_evaluation, load_starting_model


@dataclass
class ClassifyConfig(RowsConfig, TrainingArguments):
    """Fine-tune an hf_gpt encoder (MLM) or decoder (GPT) folder with a classification head on labelled text."""

    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    label_column: str = field(default="label", metadata={"help": "Column holding integer labels (rows without "
                                                                 "one are dropped)."})
    group_column: str | None = field(default=None, metadata={"help": "Hold out whole groups (e.g. movie_id): no "
                                                                     "group is in both splits."})
    balance_labels: bool = field(default=False, metadata={"help": "Downsample every label to the rarest one's count."})
    validation_fraction: float = field(default=0.2, metadata={"help": "Share of rows (or groups) held out."})
    max_length: int = field(default=128, metadata={"help": "Tokens per text (truncated)."})
    output_dir: str = field(default="runs/classify", metadata={"help": "Where checkpoints and the model go."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate (AdamW)."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}.")


def labelled_splits(rows: list[dict], args: ClassifyConfig) -> tuple[list[dict], list[dict]]:
    """Rows with a label, balanced if asked, split by group (or by row) with the seed."""
    rng = random.Random(args.seed)
    rows = [r for r in rows if r.get(args.label_column) is not None]
    if not rows:
        raise ValueError(f"No row has a {args.label_column!r} value: set label_column.")
    if args.balance_labels:
        by_label: dict = {}
        for r in rows:
            by_label.setdefault(r[args.label_column], []).append(r)
        n = min(len(v) for v in by_label.values())
        rows = [r for v in by_label.values() for r in rng.sample(v, n)]
    keys = sorted({r[args.group_column] for r in rows}) if args.group_column else list(range(len(rows)))
    rng.shuffle(keys)
    held = set(keys[: max(1, round(len(keys) * args.validation_fraction))])
    key = (lambda i, r: r[args.group_column]) if args.group_column else (lambda i, r: i)
    train = [r for i, r in enumerate(rows) if key(i, r) not in held]
    test = [r for i, r in enumerate(rows) if key(i, r) in held]
    return train, test


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


class Classification(Stage):
    """Fine-tune on the training split; report held-out accuracy next to the majority-label baseline."""

    name, title = "classifier", "classification"

    def build(self, checkpoint: str | None) -> EncoderTrainer:
        args = self.args
        train_rows, test_rows = labelled_splits(load_rows(args).to_list(), args)
        labels = sorted({r[args.label_column] for r in train_rows + test_rows})
        if any(not isinstance(label, int) for label in labels):
            raise ValueError(f"{args.label_column} must hold integer labels, got {labels[:5]}.")
        tokenizer, model = load_starting_model(args, AutoModelForSequenceClassification, "an hf_gpt MLM or GPT "
                                               "folder to fine-tune", num_labels=max(labels) + 1)
        trainer, self.test = classifier_trainer(args, tokenizer, model, train_rows, test_rows)
        return trainer

    def evaluate(self, trainer: EncoderTrainer) -> dict:
        counts = np.bincount(self.test["labels"])
        return {"accuracy": final_evaluation(trainer).get("eval_accuracy"),
                "majority_baseline": float(counts.max() / counts.sum()), "train_rows": len(trainer.train_dataset),
                "test_rows": len(self.test), "pooling": "last token" if trainer.model.config.is_causal
                else "first token"}


def train_classifier(args: ClassifyConfig, resume_from_checkpoint: str | bool = True) -> EncoderTrainer:
    return Classification(args).run(resume_from_checkpoint)


def classifier_trainer(args: ClassifyConfig, tokenizer, model, train_rows: list[dict], test_rows: list[dict]
                       ) -> tuple[EncoderTrainer, Dataset]:
    """The Trainer on the tokenised splits, and the held-out split."""

    def encode(batch: dict) -> dict:  # bos first (BERT's [CLS] position), eos last (where a GPT has read it all)
        ids = tokenizer(batch[args.text_column], add_special_tokens=False, split_special_tokens=True,
                        truncation=True, max_length=args.max_length - 2)["input_ids"]
        return {"input_ids": [[tokenizer.bos_token_id, *x, tokenizer.eos_token_id] for x in ids],
                "labels": batch[args.label_column]}

    columns = [args.text_column, args.label_column]
    train, test = (Dataset.from_list([{c: r[c] for c in columns} for r in part]).map(
        encode, batched=True, remove_columns=columns) for part in (train_rows, test_rows))
    tokenizer.padding_side = "right"  # the encoder pools position 0; the decoder finds its last real token
    trainer = EncoderTrainer(model=model, args=args, train_dataset=train, eval_dataset=test,
                             processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                             compute_metrics=accuracy)
    return trainer, test
