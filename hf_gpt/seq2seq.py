"""The original Transformer from hf_gpt's blocks: an encoder-decoder trained to translate, with transformers'
`Seq2SeqTrainer` and `DataCollatorForSeq2Seq`.

The encoder reads the source with bidirectional self-attention; the decoder writes the target with masked
self-attention and, in every block, cross-attention to the encoder's output (Q from the target, K and V from the
source). The lecture's data shapes are read from real tensors by `lecture_shapes`.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset, load_dataset
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, set_seed

from .configuration_hf_gpt import HfGptConfig
from .data import check_text_file, write_jsonl
from .distributed import GatheredSaveMixin, multi_process_on_cpu
from .hub import write_summary
from .loading import load_tokenizer
from .modeling_hf_gpt import HfGptForConditionalGeneration
from .recipe_utils import check_max_steps, final_evaluation
from .run_folder import RunFolder
from .throughput import PEAK_HELP, ThroughputMixin
from .tokenizer import special_token_ids, train_tokenizer
from .world import CAPITALS, HELD_OUT_COUNTRIES, HELD_OUT_SUMS, korean_particle

# ---------------------------------------------------------------- the world's parallel sentences


def translation_pairs(split: str) -> list[dict]:
    """English → Korean sentences of the demo world. Held out ("held_out"): the statements about the held-out
    countries and sums. Their words are all trained (the country in its question, the capital in "X is a big city",
    the digits everywhere): translating them needs the sentence pattern applied to new subjects, not memory."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be train or held_out, got {split!r}")
    rows = []
    for name, capital, name_ko, capital_ko in CAPITALS:
        held = name in HELD_OUT_COUNTRIES
        rows.append((f"What is the capital of {name}?", f"{name_ko}의 수도는 어디입니까?", False))
        rows.append((f"{capital} is a big city.", f"{korean_particle(capital_ko, '은/는')} 큰 도시입니다.", False))
        rows.append((f"The capital of {name} is {capital}.", f"{name_ko}의 수도는 {capital_ko}입니다.", held))
    for a in range(10):
        for b in range(10):
            subject = f"{a} 더하기 {korean_particle(b, '은/는')}"
            rows.append((f"What is {a} plus {b}?", f"{subject} 얼마입니까?", False))
            rows.append((f"{a} plus {b} is {a + b}.", f"{subject} {a + b}입니다.", (a, b) in HELD_OUT_SUMS))
    return [{"source": s, "target": t} for s, t, held in rows if held == (split == "held_out")]


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
class TranslateConfig(Seq2SeqTrainingArguments):
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
    n_head: int = field(default=4, metadata={"help": "Attention heads."})
    n_embd: int = field(default=128, metadata={"help": "Model width d_model."})
    max_position_embeddings: int = field(default=128, metadata={"help": "Longest source or target, in tokens."})
    position_embedding_type: str = field(default="sinusoidal", metadata={"help": "sinusoidal, learned or rope."})
    norm_position: str = field(default="pre", metadata={"help": "pre (GPT-2) or post (original Transformer)."})
    hidden_act: str = field(default="gelu", metadata={"help": "Feed-forward activation: gelu, relu, ..."})
    dropout: float = field(default=0.1, metadata={"help": "Embedding, attention and residual dropout."})
    peak_tflops: float | None = field(default=None, metadata={"help": PEAK_HELP})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Train afresh into an output_dir that holds "
                                                                        "a finished model or checkpoints."})
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
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Loggers (tensorboard, none...)."})

    def __post_init__(self):
        self.use_cpu = self.use_cpu or multi_process_on_cpu()
        check_max_steps(self.max_steps)
        super().__post_init__()


def _rows(files: list[str] | None, default: str, args: TranslateConfig) -> list[dict]:
    if not files:
        return translation_pairs(default)
    for path in files:  # one line naming the file and line of bad JSON, before `datasets` reads it
        check_text_file(Path(path))
    rows = load_dataset("json", data_files=list(files), split="train")
    for column in (args.source_column, args.target_column):
        if column not in rows.column_names:
            raise ValueError(f"{files[0]} has no column {column!r} (it has {rows.column_names}): set source_column / "
                             "target_column.")
    return [{"source": s, "target": t} for s, t in zip(rows[args.source_column], rows[args.target_column])]


def build_translation_model(args: TranslateConfig, tokenizer) -> HfGptForConditionalGeneration:
    config = HfGptConfig(
        vocab_size=len(tokenizer), is_encoder_decoder=True, num_encoder_layers=args.n_encoder_layer,
        n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
        max_position_embeddings=args.max_position_embeddings, position_embedding_type=args.position_embedding_type,
        norm_position=args.norm_position, hidden_act=args.hidden_act, embedding_dropout=args.dropout,
        attention_dropout=args.dropout, hidden_dropout=args.dropout,
        decoder_start_token_id=tokenizer.bos_token_id, **special_token_ids(tokenizer),
    )
    return HfGptForConditionalGeneration(config)


def train_translation(args: TranslateConfig, resume_from_checkpoint: str | bool = True) -> Seq2SeqTrainer:
    """Train the tokenizer on both sides, then the encoder-decoder; report held-out exact match and chrF."""
    with RunFolder(args, "translation", resume_from_checkpoint) as run:
        set_seed(args.seed)
        train_rows, test_rows = _rows(args.data_files, "train", args), _rows(args.eval_data_files, "held_out", args)
        leaked = {r["source"] for r in train_rows} & {r["source"] for r in test_rows}
        if leaked:
            raise ValueError(f"{len(leaked)} held-out sources are also training sources (e.g. {sorted(leaked)[0]!r}).")
        tokenizer = translation_tokenizer(args, train_rows, run.checkpoint)
        model = build_translation_model(args, tokenizer)
        trainer, test = translation_trainer(args, tokenizer, model, train_rows, test_rows)
        run.begin()
        run.train(trainer)
        if args.eval_strategy != "no":
            final_evaluation(trainer)
        hypotheses = translate(model, tokenizer, [r["source"] for r in test_rows])
        references = [r["target"] for r in test_rows]
        metrics = {"held_out_exact_match": exact_match(hypotheses, references),
                   "held_out_chrf": chrf(hypotheses, references), "train_pairs": len(train_rows),
                   "held_out_pairs": len(test_rows)}
        trainer.save_model(args.output_dir)
        if trainer.is_world_process_zero():
            write_jsonl(Path(args.output_dir) / "held_out_translations.jsonl",
                        [{**r, "translation": h} for r, h in zip(test_rows, hypotheses)])
            write_summary(args.output_dir, "seq2seq", metrics, data=args.data_files or "demo world pairs",
                          steps=trainer.state.global_step, throughput=trainer.throughput_summary())
    return trainer


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


class TranslationTrainer(ThroughputMixin, GatheredSaveMixin, Seq2SeqTrainer):
    """Seq2SeqTrainer with tokens/s and MFU in its logs."""

