"""Stage 1, pretraining: next-token cross-entropy over every position, computed in parallel under the causal mask.

Design choices:
- transformers' `Trainer` does the loop, so checkpoints (safetensors weights, optimizer, scheduler, RNG, data
  position), resume, Accelerate/DDP/FSDP/DeepSpeed and logging come from the library, not from us.
- Evaluation reports bits per byte (total NLL in bits / total UTF-8 bytes of the text): unlike loss per token it
  does not depend on the tokenizer, so runs with different vocabularies compare.
- `PretrainConfig` is `TrainingArguments` plus the data and model-shape fields, every one settable from YAML.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForLanguageModeling,
    EvalPrediction,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from .baselines import ngram_bits_per_byte
from .data import build_lm_datasets, load_documents
from .generation import complete
from .loading import load_model, load_tokenizer
from .modeling_hf_gpt import HfGptForCausalLM
from .report import plot_panels
from .stage import ModelShapeConfig, Stage, StartingModelConfig, final_evaluation, new_model_config
from .throughput import with_throughput
from .tokenizer import train_tokenizer


@dataclass
class PretrainConfig(StartingModelConfig, ModelShapeConfig, TrainingArguments):
    """TrainingArguments with pretraining defaults, plus data, tokenizer and model-shape fields (a fresh model unless
    model_name_or_path names one to continue)."""

    # Data
    data_files: list[str] | None = field(default=None, metadata={"help": "Local .txt/.jsonl/.parquet files."})
    text_column: str = field(default="text", metadata={"help": "Column holding the documents."})
    streaming: bool = field(default=False, metadata={"help": "Stream a corpus too big for the disk cache."})
    stream_validation_documents: int = field(default=0, metadata={"help": "With streaming and no validation split: "
                                                                          "hold out the stream's first N documents."})
    tokenizer_documents: int | None = field(default=None, metadata={"help": "Train the BPE on the first N training "
                                                                            "documents (default: all; set it for a "
                                                                            "stream)."})
    validation_fraction: float = field(default=0.1, metadata={"help": "Tail of the stream held out for eval."})
    block_size: int = field(default=256, metadata={"help": "Tokens per training sequence (the context)."})
    # Logging
    sample_prompts: list[str] = field(default_factory=lambda: ["\n"], metadata={"help": "Continued at each eval."})
    sample_max_new_tokens: int = field(default=48, metadata={"help": "Length of each logged sample."})
    # Defaults that differ from TrainingArguments': a pretraining run's, set explicitly so YAML can show them.
    output_dir: str = field(default="runs/pretrain", metadata={"help": "Where checkpoints and the model go."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (AdamW)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps (int) or fraction (<1)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate."})
    eval_steps: float | None = field(default=100, metadata={"help": "Evaluate every N steps."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int | None = field(default=3, metadata={"help": "Keep this many checkpoints."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={"help": "Loggers (tensorboard, "
                                                                                        "none, ...)."})
    fp16: bool = field(default=False, metadata={"help": "float16 mixed precision with a loss scaler (T4-class GPUs)."})
    activation_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations (saves memory)."})

    def __post_init__(self):
        super().__post_init__()
        if self.max_position_embeddings is None:
            self.max_position_embeddings = self.block_size
        if self.block_size > self.max_position_embeddings:
            raise ValueError(
                f"block_size={self.block_size} is larger than max_position_embeddings={self.max_position_embeddings}: "
                "lower block_size or raise max_position_embeddings."
            )


def load_or_train_tokenizer(args: PretrainConfig, raw_documents, checkpoint: str | None = None
                            ) -> PreTrainedTokenizerBase:
    """The given tokenizer, else the one a resumed run trained (saved in its checkpoint: never trained again, so no
    token id changes meaning mid-run), else a byte-level BPE trained on the data."""
    source = args.tokenizer_name_or_path or args.model_name_or_path
    if source:
        return load_tokenizer(source, args.trust_remote_code)
    if checkpoint and (Path(checkpoint) / "tokenizer.json").is_file():
        return load_tokenizer(checkpoint)
    documents = raw_documents["train"]
    if args.stream_validation_documents and args.streaming:  # never learn merges from the held-out head
        documents = documents.skip(args.stream_validation_documents)
    if args.tokenizer_documents:
        documents = documents.take(args.tokenizer_documents) if args.streaming else \
            documents.select(range(min(args.tokenizer_documents, len(documents))))
    texts = (row[args.text_column] for row in documents)
    return train_tokenizer(texts, vocab_size=args.vocab_size, model_max_length=args.max_position_embeddings)


def build_model(args: PretrainConfig, tokenizer: PreTrainedTokenizerBase) -> HfGptForCausalLM:
    if args.model_name_or_path:
        model = load_model(AutoModelForCausalLM, args.model_name_or_path, "the model to continue",
                           args.trust_remote_code)
    else:
        config = new_model_config(args, tokenizer)
        model = HfGptForCausalLM(config)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}: "
            "use the tokenizer the model was trained with, or a new model sized to this tokenizer."
        )
    if args.block_size > model.config.max_position_embeddings:
        raise ValueError(
            f"block_size={args.block_size} is larger than the model's max_position_embeddings="
            f"{model.config.max_position_embeddings}: lower block_size."
        )
    return model


# ---------------------------------------------------------------- bits per byte


def token_byte_lengths(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """UTF-8 bytes each token stands for; special tokens stand for none. Byte-level BPE: one symbol per byte."""
    lengths = np.zeros(len(tokenizer), dtype=np.int64)
    special = set(tokenizer.all_special_ids)
    for token, idx in tokenizer.get_vocab().items():
        if idx not in special:
            lengths[idx] = len(token)
    return lengths


def per_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log p(token_{t+1} | tokens_≤t) for every position: (B, T-1), 0 where the label is ignored (-100)."""
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets.clamp(min=0), reduction="none")
    return nll.masked_fill(targets == -100, 0.0)


def bits_per_byte(nll: np.ndarray, targets: np.ndarray, byte_lengths: np.ndarray) -> float:
    """bpb = Σ NLL (nats) / (ln 2 · Σ bytes), over target tokens that stand for text (not eos/pad)."""
    nbytes = np.where(targets >= 0, byte_lengths[np.clip(targets, 0, None)], 0)
    return float((nll * (nbytes > 0)).sum() / (math.log(2) * nbytes.sum()))


BASELINE_TOKENS = 4_000_000  # n-gram counts over at most this many training tokens (and a quarter for validation)


def ngram_baselines(train, validation, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
    """Validation bpb of unigram and bigram tables counted on the training blocks (none for a streamed corpus)."""
    if not isinstance(train, Dataset) or not isinstance(validation, Dataset):
        return {}
    def blocks(ds: Dataset, tokens: int) -> np.ndarray:
        rows = min(len(ds), max(1, tokens // len(ds[0]["input_ids"])))
        return ds.with_format("numpy")[:rows]["input_ids"]  # one slice: column access would format row by row
    found = ngram_bits_per_byte(blocks(train, BASELINE_TOKENS), blocks(validation, BASELINE_TOKENS // 4),
                                token_byte_lengths(tokenizer))
    return {f"baseline_{order}_bpb": value for order, value in found.items()}


def make_compute_metrics(tokenizer: PreTrainedTokenizerBase):
    byte_lengths = token_byte_lengths(tokenizer)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        nll, targets = prediction.predictions, prediction.label_ids[:, 1:]
        counted = targets != -100
        mean_nll = float(nll[counted].mean())
        return {"perplexity": math.exp(mean_nll), "bpb": bits_per_byte(nll, targets, byte_lengths)}

    return compute_metrics


# ---------------------------------------------------------------- trainer and callbacks


PretrainTrainer = with_throughput(Trainer)  # tokens/s and MFU in its logs; a whole model saved under FSDP


class SampleCallback(TrainerCallback):
    """Continue a few prompts at every evaluation, so progress is visible as text, not only as numbers. Every rank
    generates (under FSDP each forward pass needs every rank; the same seed gives every rank the same tokens, so all
    take the same number of steps); rank 0 alone writes."""

    def on_evaluate(self, args: PretrainConfig, state, control, model=None, processing_class=None, **kwargs):
        if model is None or processing_class is None or not args.sample_prompts:
            return
        # τ = 0.8 from a forked RNG: the training run's dropout and data order are the same whether or not it samples.
        samples = complete(model, processing_class, args.sample_prompts, args.sample_max_new_tokens, seed=0,
                           do_sample=True, temperature=0.8, top_k=0, top_p=1.0)
        if not state.is_world_process_zero:
            return
        with open(Path(args.output_dir) / "samples.md", "a", encoding="utf-8") as f:
            f.write(f"\n## step {state.global_step}\n\n")
            for prompt, text in zip(args.sample_prompts, samples):
                f.write(f"- {prompt!r} → {text!r}\n")
        print(f"[step {state.global_step}] sample: {args.sample_prompts[0]!r} → {samples[0]!r}")


def plot_curves(log_history: list[dict], path: Path) -> None:
    """Train/val loss and val bits-per-byte against steps, as a PNG."""
    points = lambda key: [(h["step"], h[key]) for h in log_history if key in h]
    plot_panels(path, [("Pretraining: next-token cross-entropy", "step", "nats per token",
                        {"train loss": points("loss"), "val loss": points("eval_loss")}),
                       ("Validation bits per byte", "step", "bits per byte", {"val bpb": points("eval_bpb")})])


def pretrain_metrics(log_history: list[dict]) -> dict:
    """The last validation figures, the n-gram baselines, and whether the GPT beats the bigram table."""
    last = ([h for h in log_history if "eval_bpb" in h] or [{}])[-1]
    baselines = ([h for h in log_history if "baseline_bigram_bpb" in h] or [{}])[-1]
    metrics = {"val_bpb": last.get("eval_bpb"), "val_loss": last.get("eval_loss"),
               "val_perplexity": last.get("eval_perplexity"), "epochs": last.get("epoch"),
               **{k: v for k, v in baselines.items() if k.startswith("baseline_")}}
    if metrics["val_bpb"] is not None and "baseline_bigram_bpb" in metrics:
        metrics["beats_baseline"] = metrics["val_bpb"] < metrics["baseline_bigram_bpb"]
    return metrics


def load_corpus(args: PretrainConfig, checkpoint: str | None = None
                ) -> tuple[PreTrainedTokenizerBase, Dataset | IterableDataset, Dataset | None]:
    """The raw text's tokenizer (loaded, or trained on it) and its packed train and validation blocks: the data of
    GPT pretraining and of BERT's masked-LM pretraining alike."""
    raw = load_documents(args.data_files, args.dataset_name, args.dataset_config, args.text_column, args.streaming)
    tokenizer = load_or_train_tokenizer(args, raw, checkpoint)
    with args.main_process_first(desc="tokenize and pack"):
        train, validation = build_lm_datasets(raw, tokenizer, args.block_size, args.text_column,
                                              args.validation_fraction,
                                              stream_validation_documents=args.stream_validation_documents)
    return tokenizer, train, validation


class Pretraining(Stage):
    """Stage 1: train the BPE (unless given) and a fresh or continued GPT on raw text."""

    name, title = "base", "pretraining"

    def __init__(self, args: PretrainConfig, callbacks: list[TrainerCallback] | None = None):
        super().__init__(args)
        self.callbacks = callbacks or []

    def build(self, checkpoint: str | None) -> PretrainTrainer:
        args = self.args
        tokenizer, self.train_data, self.validation = load_corpus(args, checkpoint)
        return PretrainTrainer(
            model=build_model(args, tokenizer),
            args=args,
            train_dataset=self.train_data,
            eval_dataset=self.validation,
            processing_class=tokenizer,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),  # labels = ids; the model shifts
            compute_metrics=make_compute_metrics(tokenizer),
            preprocess_logits_for_metrics=per_token_nll,
            callbacks=[SampleCallback(), *self.callbacks],
        )

    def evaluate(self, trainer: PretrainTrainer) -> dict:
        if self.validation is not None:
            final_evaluation(trainer)
            baselines = ngram_baselines(self.train_data, self.validation, trainer.processing_class)
            if baselines:
                trainer.log(baselines)
        return pretrain_metrics(trainer.state.log_history)

    def write_files(self, trainer: PretrainTrainer, metrics: dict) -> None:
        plot_curves(trainer.state.log_history, Path(self.args.output_dir) / "curves.png")


def pretrain(args: PretrainConfig, resume_from_checkpoint: str | bool = True,
             callbacks: list[TrainerCallback] | None = None) -> PretrainTrainer:
    """Load data, tokenizer and model, train, save the final folder (weights, tokenizer, code), plot the curves."""
    return Pretraining(args, callbacks).run(resume_from_checkpoint)
