"""Stage 2, supervised fine-tuning: next-token prediction as in pretraining, but only the response tokens' loss counts.

Design choices:
- TRL's `SFTTrainer` does the masking: `completion_only_loss` for prompt/completion rows, `assistant_only_loss`
  for conversations (through the `{% generation %}` markers of our chat template). No hand-written collator.
- Every supported layout (Alpaca, Dolly, prompt/completion, messages) is converted to TRL's *conversational*
  format, so the fine-tuned model is a chat model: `hf-gpt chat`, pipelines and `transformers serve` just work.
- Bad rows are skipped and counted with their row number and field, never a traceback from inside TRL; rows whose
  prompt fills the whole context are dropped (no response token would be left to learn from) and counted too.
- Replay (`replay_files`): blocks of pretraining text, packed as pretraining packs them, mixed into the training
  rows with loss on every token, as InstructGPT mixes pretraining gradients into RL. Fine-tuning on a few thousand
  chats otherwise wears away what the base model knew as plain text; questions the chats never asked are answered
  from that knowledge, alone and late in a long conversation.
"""

import itertools
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer

from .chat import defuse, measuring_lengths, normalize_messages, prompt_length, with_system_prompt
from .data import convert_rows, load_documents, load_rows, pack_into_blocks
from .generation import complete, fit_conversation
from .stage import (
    ChatConfig,
    LoraConfigFields,
    Stage,
    final_evaluation,
    fit_max_length,
    hold_out,
    load_starting_model,
    peft_config,
)
from .throughput import with_throughput

logger = logging.getLogger(__name__)


# A block holds a context's worth of tokens, several times a chat's replies: with more than a quarter of the rows, the
# text drowned the chats in one seed of the world demo's three (the model stopped reading the question).
REPLAY_SHARE = 0.25


@dataclass
class SFTRecipeConfig(ChatConfig, LoraConfigFields, SFTConfig):
    """TRL's SFTConfig plus data, system prompt and LoRA fields (every one settable from YAML)."""

    validation_fraction: float = field(default=0.1, metadata={"help": "Rows held out for eval loss and samples."})
    num_sample_answers: int = field(default=4, metadata={"help": "Held-out prompts answered at the end."})
    merge_adapter: bool = field(default=False, metadata={"help": "Also save the LoRA-merged model in merged/."})
    replay_files: list[str] | None = field(default=None, metadata={"help": "Plain-text documents (pretraining's "
                                           ".txt/.jsonl files) mixed into the training rows to keep what the base "
                                           "model knew."})
    replay_share: float | None = field(default=None, metadata={"help": "Share of training rows that are blocks of "
                                           "replayed text (with replay_files; default 0.25)."})
    # Defaults that differ from SFTConfig's.
    output_dir: str = field(default="runs/sft", metadata={"help": "Where checkpoints and the model go."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate."})
    max_length: int | None = field(default=None, metadata={"help": "Context (default: the model's)."})
    assistant_only_loss: bool | None = field(default=None, metadata={"help": "Loss on the assistant turns only "
                                                                             "(default: for conversations)."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate."})
    eval_steps: float | None = field(default=50, metadata={"help": "Evaluate every N steps."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every N steps."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPUs)."})

    def __post_init__(self):
        if self.replay_share is not None and not 0 < self.replay_share < 1:
            raise ValueError(f"replay_share must be between 0 and 1 (the share of replayed rows), got "
                             f"{self.replay_share}.")
        if self.replay_share is not None and not self.replay_files:
            raise ValueError("replay_share needs replay_files (the plain-text documents to replay).")
        if missing := [f for f in self.replay_files or () if not Path(f).is_file()]:
            raise FileNotFoundError(f"replay_files: no file at {', '.join(missing)} (give pretraining's .txt or "
                                    ".jsonl files).")
        if self.replay_files and False in (self.assistant_only_loss, self.completion_only_loss):
            raise ValueError("With replay_files the loss counts the replies and the documents only: leave "
                             "assistant_only_loss and completion_only_loss unset.")
        super().__post_init__()


# ------------------------------------------------------------------ formats


def to_conversation(row: dict, system_prompt: str | None = None) -> dict:
    """One row of any supported layout → TRL's conversational format; raises ValueError naming the field."""
    if "messages" in row:
        messages = normalize_messages(row["messages"], "field 'messages'")
        if not any(t["role"] == "assistant" for t in messages):
            raise ValueError("field 'messages' has no assistant turn to learn from")
        return {"messages": with_system_prompt(messages, system_prompt)}
    prompt, response = _prompt_and_response(row)
    return {"prompt": with_system_prompt([{"role": "user", "content": defuse(prompt)}], system_prompt),
            "completion": [{"role": "assistant", "content": defuse(response)}]}


def _prompt_and_response(row: dict) -> tuple[str, str]:
    if "completion" in row:  # {"prompt", "completion"}
        prompt, response, prompt_field, response_field = row.get("prompt"), row["completion"], "prompt", "completion"
    elif "output" in row:  # Alpaca: {"instruction", "input", "output"}
        prompt = _join(row.get("instruction"), row.get("input"), "")
        response, prompt_field, response_field = row["output"], "instruction", "output"
    elif "response" in row:  # Dolly: {"instruction", "context", "response"}
        prompt = _join(row.get("instruction"), row.get("context"), "Context:\n")
        response, prompt_field, response_field = row["response"], "instruction", "response"
    else:
        raise ValueError("no response field")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"field {prompt_field!r} is empty or not a string")
    if not isinstance(response, str) or not response.strip():
        raise ValueError(f"field {response_field!r} is empty or not a string")
    return prompt, response


def _join(instruction, extra, label: str) -> str | None:
    if not isinstance(instruction, str):
        return instruction
    return f"{instruction}\n\n{label}{extra}" if isinstance(extra, str) and extra.strip() else instruction


LAYOUTS = "messages | prompt+completion | instruction+output(+input) | instruction+response(+context)"


def check_columns(columns: list[str]) -> None:
    if "messages" in columns or "completion" in columns and "prompt" in columns:
        return
    if "instruction" in columns and ("output" in columns or "response" in columns):
        return
    raise ValueError(f"The SFT data has columns {columns}; expected one of the layouts {LAYOUTS}.")


def prepare_sft_dataset(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int,
                        system_prompt: str | None = None) -> tuple[Dataset, Counter]:
    """Convert to conversations, skip bad rows and rows with no response token inside max_length, shorten
    conversations that outgrow it by their oldest turns; count all three."""
    check_columns(dataset.column_names)
    measuring_lengths(tokenizer)

    def fits(example: dict) -> tuple[str, str | None] | None:
        dropped = 0
        if "messages" in example:  # shortened in place, so that the row kept is the one measured below
            example["messages"], dropped = latest_turns_that_fit(example["messages"], tokenizer, max_length)
        prompt_tokens, full_length = _lengths(example, tokenizer)
        if prompt_tokens >= max_length:
            return "dropped: prompt fills the context", f"prompt of {prompt_tokens} tokens >= max_length {max_length}"
        if full_length > max_length:
            return "truncated (response cut at max_length)", None
        return ("shortened (oldest turns dropped to fit max_length)", None) if dropped else None

    return convert_rows(dataset, lambda row: to_conversation(row, system_prompt), fits, "SFT")


def latest_turns_that_fit(messages: list[dict], tokenizer: PreTrainedTokenizerBase, max_length: int
                          ) -> tuple[list[dict], int]:
    """A conversation longer than max_length without its oldest turns (the system prompt stays), as `hf-gpt chat`
    sends a long one, so that its last reply is learnt whole rather than cut off; and how many turns went."""
    full = len(_ids(tokenizer.apply_chat_template(messages)))
    if full <= max_length or messages[-1]["role"] != "assistant":
        return messages, 0
    reply = full - prompt_length(tokenizer, messages[:-1])
    kept, dropped = fit_conversation(tokenizer, messages[:-1], max_length, reply)
    return [*kept, messages[-1]], dropped


def _lengths(example: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Tokens before the first response token, and in the whole rendered example."""
    if "messages" in example:
        out = tokenizer.apply_chat_template(example["messages"], return_dict=True, return_assistant_tokens_mask=True)
        return out["assistant_masks"].index(1), len(out["input_ids"])
    prompt = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True)
    full = tokenizer.apply_chat_template(example["prompt"] + example["completion"])
    return len(_ids(prompt)), len(_ids(full))


def as_token_rows(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict]:
    """Conversations as token ids with a mask of the tokens that count (the assistant turns, as
    `assistant_only_loss`), cut to max_length."""
    rows = []
    for example in dataset:
        messages = example["messages"] if "messages" in example else example["prompt"] + example["completion"]
        out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        rows.append({"input_ids": out["input_ids"][:max_length],
                     "completion_mask": out["assistant_masks"][:max_length]})
    return rows


def replay_blocks(documents: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int, count: int,
                  seed: int) -> list[list[int]]:
    """`count` blocks of pretraining text as pretraining packs them: the documents (shuffled, read again in turn when
    they give too few) joined by eos and cut into blocks of block_size tokens. Packed, the facts sit at every position
    of the context, as they do in a long conversation, and an eos is seen to end what came before it."""
    order = random.Random(seed).sample(documents, len(documents))
    # Tokenised lazily, as many as the blocks need (a corpus may be large); cycle() keeps them for the next round.
    tokens = itertools.cycle(tokenizer(d, add_special_tokens=False, split_special_tokens=True)["input_ids"]
                             for d in order)
    return list(itertools.islice(pack_into_blocks(tokens, block_size, tokenizer.eos_token_id), count))


def with_replay(train: Dataset, documents: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int,
                share: float, seed: int) -> tuple[Dataset, int]:
    """The chat rows (`as_token_rows`) and `share` of rows that are blocks of pretraining text (`replay_blocks`),
    every token counting. Returns the rows and how many are blocks."""
    rows = as_token_rows(train, tokenizer, max_length)
    blocks = replay_blocks(documents, tokenizer, max_length, round(len(rows) * share / (1 - share)), seed)
    rows += [{"input_ids": block, "completion_mask": [1] * len(block)} for block in blocks]
    return Dataset.from_list(rows).shuffle(seed=seed), len(blocks)


def replay_documents(args: SFTRecipeConfig) -> list[str]:
    documents = [d for d in load_documents(args.replay_files)["train"]["text"] if d and d.strip()]
    if not documents:
        raise ValueError(f"replay_files {args.replay_files} hold no text to replay.")
    return documents


def _ids(output) -> list[int]:
    return output["input_ids"] if isinstance(output, dict) or hasattr(output, "keys") else output


# ------------------------------------------------------------------ training


def _prompt_of(example: dict) -> list[dict]:
    if "prompt" in example:
        return example["prompt"]
    messages = example["messages"]
    first_reply = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:first_reply]


class SupervisedFineTuning(Stage):
    """Fine-tune, evaluate, answer held-out prompts, save (adapter and/or merged model) with tokenizer and code."""

    name, title = "sft", "SFT"

    def build(self, checkpoint: str | None) -> SFTTrainer:
        args = self.args
        tokenizer, model = load_starting_model(args, AutoModelForCausalLM, "a pretrained hf_gpt folder or Hub id")
        rows, self.report = prepare_sft_dataset(load_rows(args), tokenizer, fit_max_length(args, model),
                                                args.system_prompt)
        train, self.evaluation = hold_out(rows, args)
        evaluation = self.evaluation
        if args.replay_files:  # token ids with a mask of the tokens that count, so chats and documents mix
            train, self.report["replayed blocks"] = with_replay(
                train, replay_documents(args), tokenizer, args.max_length, args.replay_share or REPLAY_SHARE, args.seed)
            if evaluation is not None:  # its loss on the assistant turns, as without replay
                evaluation = Dataset.from_list(as_token_rows(evaluation, tokenizer, args.max_length))
            args.assistant_only_loss, args.completion_only_loss = False, True
        elif args.assistant_only_loss is None:  # conversations learn from the assistant turns; TRL's own default
            args.assistant_only_loss = "messages" in rows.column_names  # (None) does so for prompt/completion
        logger.warning("SFT data: %s", dict(self.report))
        return with_throughput(SFTTrainer)(model=model, args=args, train_dataset=train,
                                           eval_dataset=evaluation, processing_class=tokenizer,
                                           peft_config=peft_config(args))

    def evaluate(self, trainer: SFTTrainer) -> dict:
        metrics = final_evaluation(trainer) if self.evaluation is not None else {}
        if self.evaluation is not None:  # every rank generates: under FSDP each forward pass needs them all
            held_out = [self.evaluation[i] for i in range(min(self.args.num_sample_answers, len(self.evaluation)))]
            self.prompts = [_prompt_of(example) for example in held_out]
            self.answers = complete(trainer.model, trainer.processing_class, self.prompts, do_sample=False,
                                    skip_special_tokens=False)
        return {"eval_loss": metrics.get("eval_loss"), "data_report": dict(self.report), "epochs": trainer.state.epoch}

    def write_files(self, trainer: SFTTrainer, metrics: dict) -> None:
        out = Path(self.args.output_dir)
        if self.args.use_peft and self.args.merge_adapter:
            trainer.model.merge_and_unload().save_pretrained(out / "merged")
            trainer.processing_class.save_pretrained(out / "merged")
        if self.evaluation is not None:
            write_sample_answers(out, [p[-1]["content"] for p in self.prompts], self.answers, self.report, metrics)


def sft(args: SFTRecipeConfig, resume_from_checkpoint: str | bool = True) -> SFTTrainer:
    return SupervisedFineTuning(args).run(resume_from_checkpoint)


def write_sample_answers(out: Path, prompts: list[str], answers: list[str], report: Counter, metrics: dict) -> None:
    """Greedy answers to the first held-out prompts, in samples.md and samples.json."""
    with open(out / "samples.md", "w", encoding="utf-8") as f:
        f.write(f"# SFT samples\n\ndata: {dict(report)}\neval: {metrics}\n\n")
        for prompt, answer in zip(prompts, answers):
            f.write(f"- prompt: {prompt!r}\n  answer: {answer!r}\n")
    (out / "samples.json").write_text(json.dumps(
        [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)], indent=1, ensure_ascii=False))
