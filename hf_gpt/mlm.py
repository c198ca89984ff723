"""BERT from hf_gpt's blocks: masked-language-model pretraining.

BERT is the encoder half of the Transformer: the same blocks as GPT without the causal mask, so every token sees
the whole text ("어제 카페 갔었어 [MASK] 사람 많더라": the blank is read from both sides). It is trained by hiding 15 %
of the tokens and predicting them (transformers' `DataCollatorForLanguageModeling(mlm=True)`: of the chosen tokens 80 %
become [MASK], 10 % a random token, 10 % stay), then fine-tuned with a classification head (`classify.py`).
"""

import zlib
from dataclasses import dataclass, field

import torch
from transformers import DataCollatorForLanguageModeling, EvalPrediction, Trainer, TrainerCallback

from .loading import load_model
from .modeling_hf_gpt import HfGptForMaskedLM
from .pretrain import PretrainConfig, load_corpus
from .stage import Stage, final_evaluation, new_model_config
from .throughput import with_throughput

EncoderTrainer = with_throughput(Trainer)  # tokens/s and MFU in its logs; a whole model saved under FSDP


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
    return HfGptForMaskedLM(new_model_config(args, tokenizer, is_causal=False))


def masked_token_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Share of the hidden tokens predicted exactly (the preprocessed predictions are argmax ids)."""
    predicted, labels = prediction.predictions, prediction.label_ids
    hidden = labels != -100
    return {"masked_accuracy": float((predicted[hidden] == labels[hidden]).mean()) if hidden.any() else 0.0}


@dataclass
class ResumableMasking(DataCollatorForLanguageModeling):
    """BERT's masking, each block's masks drawn from an RNG seeded by (seed, epoch, the block's tokens): a resumed
    run masks the same tokens (a running RNG is a prefetched batch ahead when a checkpoint is saved, and Trainer
    restores its own only after the first resumed batch), and every epoch masks anew (dynamic masking)."""

    mask_seed: int = 0
    epoch: int = 0

    def torch_call(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rows = []
        for example in examples:
            tokens = zlib.crc32(torch.as_tensor(example["input_ids"], dtype=torch.int64).numpy().tobytes())
            with torch.random.fork_rng():
                torch.manual_seed(hash((self.mask_seed, self.epoch, tokens)) % 2**63)
                rows.append(super().torch_call([example]))
        return {key: torch.cat([row[key] for row in rows]) for key in rows[0]}


class MaskingEpoch(TrainerCallback):
    """Tells the masking collator which epoch is starting."""

    def __init__(self, collator: ResumableMasking):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = round(state.epoch or 0)


class MaskedLMPretraining(Stage):
    """Train the tokenizer (with its mask token) and a bidirectional encoder on raw text."""

    name, title = "mlm", "masked-LM pretraining"

    def build(self, checkpoint: str | None) -> EncoderTrainer:
        args = self.args
        tokenizer, train, self.validation = load_corpus(args, checkpoint)
        masking = ResumableMasking(tokenizer, mlm=True, mlm_probability=args.mlm_probability, mask_seed=args.seed)
        return EncoderTrainer(
            model=build_encoder(args, tokenizer), args=args, train_dataset=train, eval_dataset=self.validation,
            processing_class=tokenizer, data_collator=masking, callbacks=[MaskingEpoch(masking)],
            compute_metrics=masked_token_accuracy,
            preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
        )

    def evaluate(self, trainer: EncoderTrainer) -> dict:
        metrics = final_evaluation(trainer) if self.validation is not None else {}
        return {k: v for k, v in metrics.items() if k.startswith("eval_")}


def pretrain_mlm(args: MlmConfig, resume_from_checkpoint: str | bool = True) -> EncoderTrainer:
    return MaskedLMPretraining(args).run(resume_from_checkpoint)
