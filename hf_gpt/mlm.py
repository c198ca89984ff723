"""BERT from hf_gpt's blocks: masked-language-model pretraining, then sequence classification.

BERT is the encoder half of the Transformer: the same blocks as GPT without the causal mask, so every token sees
the whole text ("어제 카페 갔었어 [MASK] 사람 많더라": the blank is read from both sides). It is trained by hiding 15 %
of the tokens and predicting them (transformers' `DataCollatorForLanguageModeling(mlm=True)`: of the chosen tokens 80 %
become [MASK], 10 % a random token, 10 % stay), then fine-tuned with a classification head on the first token.

`classify` fine-tunes either kind of hf_gpt model on labelled text: an MLM encoder (pooled at the first token, as
BERT's [CLS]) or a GPT decoder (pooled at the last token, which alone has seen the whole text), so the two compare on
one split.
"""

import random
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    EvalPrediction,
    Trainer,
    TrainingArguments,
    set_seed,
)

from .configuration_hf_gpt import HfGptConfig
from .data import load_rows
from .distributed import GatheredSaveMixin
from .hub import write_summary
from .loading import load_model
from .modeling_hf_gpt import HfGptForMaskedLM
from .pretrain import PretrainConfig, load_corpus
from .recipe_utils import RecipeFields, final_evaluation, load_stage
from .run_folder import RunFolder
from .throughput import ThroughputMixin
from .tokenizer import special_token_ids


class EncoderTrainer(ThroughputMixin, GatheredSaveMixin, Trainer):
    """Trainer with tokens/s and MFU in its logs."""


# ---------------------------------------------------------------- masked-language-model pretraining


@dataclass
class MlmConfig(PretrainConfig):
    """PretrainConfig for a BERT-style encoder: the same data, tokenizer and shape fields, plus the masking rate."""

    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens hidden and predicted (BERT: "
                                                                   "0.15)."})
    output_dir: str = field(default="runs/mlm", metadata={"help": "Where checkpoints and the model go."})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}.")
        if self.sample_prompts != ["\n"] or self.sample_max_new_tokens != 48:
            raise ValueError("sample_prompts / sample_max_new_tokens are for GPT pretraining: an encoder does not "
                             "generate. Drop them.")


def build_encoder(args: MlmConfig, tokenizer) -> HfGptForMaskedLM:
    if tokenizer.mask_token_id is None:
        raise ValueError("The tokenizer has no mask token: train a new one (leave tokenizer_name_or_path unset) or "
                         "use one trained by this hf_gpt version.")
    if args.model_name_or_path:
        return load_model(HfGptForMaskedLM, args.model_name_or_path, "the encoder to continue", args.trust_remote_code)
    config = HfGptConfig(
        vocab_size=len(tokenizer), n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
        max_position_embeddings=args.max_position_embeddings, position_embedding_type=args.position_embedding_type,
        sinusoidal_base=args.sinusoidal_base, norm_position=args.norm_position, hidden_act=args.hidden_act,
        embedding_dropout=args.dropout, attention_dropout=args.dropout, hidden_dropout=args.dropout,
        is_causal=False, **special_token_ids(tokenizer),
    )
    return HfGptForMaskedLM(config)


def masked_token_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Share of the hidden tokens predicted exactly (the preprocessed predictions are argmax ids)."""
    predicted, labels = prediction.predictions, prediction.label_ids
    hidden = labels != -100
    return {"masked_accuracy": float((predicted[hidden] == labels[hidden]).mean()) if hidden.any() else 0.0}


def pretrain_mlm(args: MlmConfig, resume_from_checkpoint: str | bool = True) -> EncoderTrainer:
    """Train the tokenizer (with its mask token) and a bidirectional encoder on raw text; save the folder."""
    with RunFolder(args, "masked-LM pretraining", resume_from_checkpoint) as run:
        set_seed(args.seed)
        tokenizer, train, validation = load_corpus(args, run.checkpoint)
        model = build_encoder(args, tokenizer)
        trainer = EncoderTrainer(
            model=model, args=args, train_dataset=train, eval_dataset=validation, processing_class=tokenizer,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=args.mlm_probability,
                                                          seed=args.seed),
            compute_metrics=masked_token_accuracy,
            preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
        )
        run.begin()
        run.train(trainer)
        metrics = final_evaluation(trainer) if validation is not None else {}
        trainer.save_model(args.output_dir)
        if trainer.is_world_process_zero():
            write_summary(args.output_dir, "mlm", {k: v for k, v in metrics.items() if k.startswith("eval_")},
                          data=args.data_files or args.dataset_name, steps=trainer.state.global_step,
                          throughput=trainer.throughput_summary())
    return trainer


def fill_mask(model, tokenizer, text_ids: list[int], position: int, top_k: int = 3) -> list[tuple[str, float]]:
    """The encoder's top-k tokens for the blank at `position` of `text_ids` (that token replaced by [MASK])."""
    ids = list(text_ids)
    ids[position] = tokenizer.mask_token_id
    with torch.no_grad():
        probs = model(torch.tensor([ids], device=model.device)).logits[0, position].softmax(-1)
    top = probs.topk(top_k)
    return [(tokenizer.decode([i]), float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]


# ---------------------------------------------------------------- sequence classification


@dataclass
class ClassifyConfig(RecipeFields, TrainingArguments):
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
        if self.system_prompt:
            raise ValueError("system_prompt is for the chat stages: a classifier reads plain text. Drop it.")


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


def train_classifier(args: ClassifyConfig, resume_from_checkpoint: str | bool = True) -> EncoderTrainer:
    """Fine-tune on the training split, report held-out accuracy next to the majority-label baseline."""
    with RunFolder(args, "classification", resume_from_checkpoint) as run:
        set_seed(args.seed)
        rows = load_rows(args).to_list()
        train_rows, test_rows = labelled_splits(rows, args)
        labels = sorted({r[args.label_column] for r in train_rows + test_rows})
        if any(not isinstance(label, int) for label in labels):
            raise ValueError(f"{args.label_column} must hold integer labels, got {labels[:5]}.")
        tokenizer, model = load_stage(args, AutoModelForSequenceClassification, "an hf_gpt MLM or GPT folder to "
                                      "fine-tune", num_labels=max(labels) + 1)
        trainer, test = classifier_trainer(args, tokenizer, model, train_rows, test_rows)
        run.begin()
        run.train(trainer)
        metrics = final_evaluation(trainer)
        counts = np.bincount(test["labels"])
        metrics = {"accuracy": metrics.get("eval_accuracy"), "majority_baseline": float(counts.max() / counts.sum()),
                   "train_rows": len(trainer.train_dataset), "test_rows": len(test),
                   "pooling": "first token" if not model.config.is_causal else "last token"}
        trainer.save_model(args.output_dir)
        if trainer.is_world_process_zero():
            write_summary(args.output_dir, "classifier", metrics, data=args.data_files or args.dataset_name,
                          base_model=args.model_name_or_path, steps=trainer.state.global_step,
                          throughput=trainer.throughput_summary())
    return trainer


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
