"""The original Transformer from hf_gpt's blocks: an encoder-decoder trained to translate, with transformers'
`Seq2SeqTrainer` and `DataCollatorForSeq2Seq`.

The encoder reads the source with bidirectional self-attention; the decoder writes the target with masked
self-attention and, in every block, cross-attention to the encoder's output (Q from the target, K and V from the
source). The lecture's data shapes are read from real tensors by `lecture_shapes`.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

from .data import read_rows, write_jsonl
from .loading import load_tokenizer
from .modeling_hf_gpt import HfGptForConditionalGeneration
from .stage import ModelShapeConfig, Stage, StageConfig, final_evaluation, new_model_config
from .throughput import with_throughput
from .tokenizer import train_tokenizer
from .world import translation_pairs  # the embedded data set: the default pairs when no files are given

# ---------------------------------------------------------------- metrics


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (character n-gram F-score, sacreBLEU's implementation), 0–100."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(hypotheses, [references]).score)


def exact_match(hypotheses: list[str], references: list[str]) -> float:
    return sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / max(1, len(references))


def translate(model, tokenizer, sources: list[str], max_new_tokens: int = 48, batch_size: int = 32) -> list[str]:
    """Greedy translations, through `generate` with the encoder-decoder cache."""
    model.eval()
    outputs = []
    tokenizer.padding_side = "right"
    for i in range(0, len(sources), batch_size):
        batch = tokenizer(sources[i:i + batch_size], return_tensors="pt", padding=True).to(model.device)
        with torch.no_grad():
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        outputs += tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [o.strip() for o in outputs]


# ---------------------------------------------------------------- the lecture's shapes from real tensors


def lecture_shapes(model: HfGptForConditionalGeneration, source_ids: torch.Tensor, target_ids: torch.Tensor,
                   ) -> list[dict]:
    """The lecture's table (batch dimension dropped), read from one forward pass of the first blocks with hooks on
    W^Q/W^K and output_attentions: encoder Q,K,V (L, d_model), heads (h, L, d_k), scores (h, L, L); decoder masked
    scores (h, T, T); cross-attention Q (h, T, d_k), K/V (h, L, d_k), scores (h, T, L); logits (T, vocab)."""
    seen: dict[str, tuple] = {}
    encoder_attention = model.model.encoder.layers[0].attention
    cross = model.model.decoder.layers[0].cross_attention

    def record(name: str):
        def hook(module, inputs, output) -> None:  # returns None: the output is left as it is
            seen.setdefault(name, tuple(output.shape[1:]))
        return hook

    hooks = [encoder_attention.q_proj.register_forward_hook(record("enc_q")),
             cross.q_proj.register_forward_hook(record("cross_q")),
             cross.k_proj.register_forward_hook(record("cross_k"))]
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the path that returns the attention weights
    try:
        with torch.no_grad():
            out = model(input_ids=source_ids, decoder_input_ids=target_ids, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
        for hook in hooks:
            hook.remove()
    h, d_k = model.config.num_attention_heads, model.config.head_dim
    length, d_model = seen["enc_q"]
    target_length = seen["cross_q"][0]

    def row(where: str, what: str, shape, symbols: str) -> dict:
        return {"where": where, "tensor": what, "shape": tuple(int(s) for s in shape), "lecture": symbols}

    return [
        row("encoder self-attention", "Q, K, V = X W^Q, X W^K, X W^V", (length, d_model), "(L, d_model)"),
        row("encoder self-attention", "Q per head", (h, length, d_k), "(h, L, d_k)"),
        row("encoder self-attention", "softmax(QKᵀ/√d_k)", out.encoder_attentions[0].shape[1:], "(h, L, L)"),
        row("decoder masked self-attention", "softmax(QKᵀ/√d_k + M)", out.decoder_attentions[0].shape[1:],
            "(h, T, T)"),
        row("cross-attention", "Q from the decoder", (h, target_length, d_k), "(h, T, d_k)"),
        row("cross-attention", "K, V from the encoder", (h, seen["cross_k"][0], d_k), "(h, L, d_k)"),
        row("cross-attention", "softmax(QKᵀ/√d_k)", out.cross_attentions[0].shape[1:], "(h, T, L)"),
        row("decoder output", "logits", out.logits.shape[1:], "(T, vocab)"),
    ]


# ---------------------------------------------------------------- training recipe


@dataclass
class TranslateConfig(StageConfig, ModelShapeConfig, Seq2SeqTrainingArguments):
    """Seq2SeqTrainingArguments plus the data, tokenizer and shape of a new hf_gpt encoder-decoder."""

    data_files: list[str] | None = field(default=None, metadata={"help": "Training .jsonl rows {source, target} "
                                                                         "(default: the demo world's pairs)."})
    eval_data_files: list[str] | None = field(default=None, metadata={"help": "Held-out .jsonl rows (default: the "
                                                                              "world's held-out pairs)."})
    source_column: str = field(default="source", metadata={"help": "Column of the text to translate."})
    target_column: str = field(default="target", metadata={"help": "Column of its translation."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "A trained tokenizer; if unset, a "
                                                                               "byte-level BPE is trained on both "
                                                                               "columns."})
    vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary size when training a tokenizer."})
    n_encoder_layer: int = field(default=2, metadata={"help": "Encoder blocks (bidirectional)."})
    n_layer: int = field(default=2, metadata={"help": "Decoder blocks (masked self-attention + cross-attention)."})
    n_embd: int = field(default=128, metadata={"help": "Model width d_model."})
    max_position_embeddings: int = field(default=128, metadata={"help": "Longest source or target, in tokens."})
    dropout: float = field(default=0.1, metadata={"help": "Embedding, attention and residual dropout."})
    output_dir: str = field(default="runs/translate", metadata={"help": "Where checkpoints and the model go."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (AdamW)."})
    num_train_epochs: float = field(default=30, metadata={"help": "Passes over the training pairs."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Pairs per step."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps (int) or fraction (<1)."})
    eval_strategy: str = field(default="no", metadata={"help": "Held-out loss during training (chrF and exact "
                                                               "match are computed once, at the end)."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep this many checkpoints."})
    logging_steps: float = field(default=20, metadata={"help": "Log every N steps."})


def _rows(files: list[str] | None, default: str, args: TranslateConfig) -> list[dict]:
    if not files:
        return translation_pairs(default)
    rows = read_rows(files)
    for column in (args.source_column, args.target_column):
        if column not in rows.column_names:
            raise ValueError(f"{files[0]} has no column {column!r} (it has {rows.column_names}): set source_column / "
                             "target_column.")
    return [{"source": s, "target": t} for s, t in zip(rows[args.source_column], rows[args.target_column])]


def build_translation_model(args: TranslateConfig, tokenizer) -> HfGptForConditionalGeneration:
    return HfGptForConditionalGeneration(new_model_config(
        args, tokenizer, is_encoder_decoder=True, num_encoder_layers=args.n_encoder_layer,
        decoder_start_token_id=tokenizer.bos_token_id))


TranslationTrainer = with_throughput(Seq2SeqTrainer)  # tokens/s and MFU in its logs; a whole model under FSDP


class Translation(Stage):
    """Train the tokenizer on both sides, then the encoder-decoder; report held-out exact match and chrF."""

    name, title = "seq2seq", "translation"

    def build(self, checkpoint: str | None) -> TranslationTrainer:
        args = self.args
        train_rows, self.test_rows = _rows(args.data_files, "train", args), _rows(args.eval_data_files, "held_out",
                                                                                  args)
        leaked = {r["source"] for r in train_rows} & {r["source"] for r in self.test_rows}
        if leaked:
            raise ValueError(f"{len(leaked)} held-out sources are also training sources (e.g. {sorted(leaked)[0]!r}).")
        tokenizer = translation_tokenizer(args, train_rows, checkpoint)
        self.train_pairs = len(train_rows)
        trainer, _ = translation_trainer(args, tokenizer, build_translation_model(args, tokenizer), train_rows,
                                         self.test_rows)
        return trainer

    def evaluate(self, trainer: TranslationTrainer) -> dict:
        if self.args.eval_strategy != "no":
            final_evaluation(trainer)
        self.hypotheses = translate(trainer.model, trainer.processing_class, [r["source"] for r in self.test_rows])
        references = [r["target"] for r in self.test_rows]
        return {"held_out_exact_match": exact_match(self.hypotheses, references),
                "held_out_chrf": chrf(self.hypotheses, references), "train_pairs": self.train_pairs,
                "held_out_pairs": len(self.test_rows)}

    def write_files(self, trainer: TranslationTrainer, metrics: dict) -> None:
        write_jsonl(Path(self.args.output_dir) / "held_out_translations.jsonl",
                    [{**r, "translation": h} for r, h in zip(self.test_rows, self.hypotheses)])

    def data_source(self):
        return self.args.data_files or "demo world pairs"


def train_translation(args: TranslateConfig, resume_from_checkpoint: str | bool = True) -> TranslationTrainer:
    return Translation(args).run(resume_from_checkpoint)


def translation_tokenizer(args: TranslateConfig, train_rows: list[dict], checkpoint: str | None):
    """The given tokenizer, a resumed run's own (never trained again), or a BPE trained on both columns."""
    source = args.tokenizer_name_or_path or (checkpoint if checkpoint and Path(checkpoint, "tokenizer.json").is_file()
                                             else None)
    if source:
        return load_tokenizer(source)
    return train_tokenizer(iter([r[c] for r in train_rows for c in ("source", "target")]),
                           vocab_size=args.vocab_size, min_frequency=1, model_max_length=args.max_position_embeddings)


def translation_trainer(args: TranslateConfig, tokenizer, model, train_rows: list[dict], test_rows: list[dict]
                        ) -> tuple[Seq2SeqTrainer, Dataset]:
    limit = args.max_position_embeddings

    def encode(row: dict) -> dict:  # the target ends with eos: the decoder learns where to stop
        text = dict(truncation=True, split_special_tokens=True)  # typed "<|eos|>" is text, not the eos
        return {"input_ids": tokenizer(row["source"], max_length=limit, **text)["input_ids"],
                "labels": [*tokenizer(row["target"], max_length=limit - 1, **text)["input_ids"],
                           tokenizer.eos_token_id]}

    train, test = (Dataset.from_list(rows).map(encode, remove_columns=["source", "target"])
                   for rows in (train_rows, test_rows))
    trainer = TranslationTrainer(model=model, args=args, train_dataset=train, eval_dataset=test,
                                 processing_class=tokenizer,
                                 data_collator=DataCollatorForSeq2Seq(tokenizer, model=model))
    return trainer, test
