"""Stage 2, supervised fine-tuning: next-token prediction as in pretraining, but only the response tokens' loss counts.

Design choices:
- TRL's `SFTTrainer` does the masking: `completion_only_loss` for prompt/completion rows, `assistant_only_loss`
  for conversations (through the `{% generation %}` markers of our chat template). No hand-written collator.
- Every supported layout (Alpaca, Dolly, prompt/completion, messages) is converted to TRL's *conversational*
  format, so the fine-tuned model is a chat model: `hf-gpt chat`, pipelines and `transformers serve` just work.
- Bad rows are skipped and counted with their row number and field, never a traceback from inside TRL; rows whose
  prompt fills the whole context are dropped (no response token would be left to learn from) and counted too.
"""

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase, set_seed
from trl import SFTConfig, SFTTrainer

from .chat import defuse, normalize_messages, with_system_prompt
from .data import convert_rows, load_rows
from .hub import write_summary
from .recipe_utils import RecipeFields, final_evaluation, hold_out, load_stage
from .run_folder import RunFolder
from .throughput import with_throughput

logger = logging.getLogger(__name__)


@dataclass
class SFTRecipeConfig(RecipeFields, SFTConfig):
    """TRL's SFTConfig plus data, system prompt and LoRA fields (every one settable from YAML)."""

    validation_fraction: float = field(default=0.1, metadata={"help": "Rows held out for eval loss and samples."})
    num_sample_answers: int = field(default=4, metadata={"help": "Held-out prompts answered at the end."})
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "Modules that get adapters."})
    merge_adapter: bool = field(default=False, metadata={"help": "Also save the LoRA-merged model in merged/."})
    # Defaults that differ from SFTConfig's.
    output_dir: str = field(default="runs/sft", metadata={"help": "Where checkpoints and the model go."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate."})
    max_length: int | None = field(default=None, metadata={"help": "Context (default: the model's)."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate."})
    eval_steps: float | None = field(default=50, metadata={"help": "Evaluate every N steps."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every N steps."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPUs)."})



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
    """Convert to conversations, skip bad rows and rows with no response token inside max_length; count both."""
    check_columns(dataset.column_names)

    def fits(example: dict) -> tuple[str, str | None] | None:
        prompt_length, full_length = _lengths(example, tokenizer)
        if prompt_length >= max_length:
            return "dropped: prompt fills the context", f"prompt of {prompt_length} tokens >= max_length {max_length}"
        return ("truncated (response cut at max_length)", None) if full_length > max_length else None

    return convert_rows(dataset, lambda row: to_conversation(row, system_prompt), fits, "SFT")


def _lengths(example: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Tokens before the first response token, and in the whole rendered example."""
    if "messages" in example:
        out = tokenizer.apply_chat_template(example["messages"], return_dict=True, return_assistant_tokens_mask=True)
        return out["assistant_masks"].index(1), len(out["input_ids"])
    prompt = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True)
    full = tokenizer.apply_chat_template(example["prompt"] + example["completion"])
    return len(_ids(prompt)), len(_ids(full))


def _ids(output) -> list[int]:
    return output["input_ids"] if isinstance(output, dict) or hasattr(output, "keys") else output


# ------------------------------------------------------------------ training


def sample_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 64) -> list[str]:
    """Greedy answers through the chat template, stopping at eos."""
    was_training = model.training
    model.eval()
    answers = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"].to(model.device)
        room = max(1, min(max_new_tokens, model.config.max_position_embeddings - ids.shape[1]))
        out = model.generate(ids, max_new_tokens=room, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False))
    model.train(was_training)
    return answers


def _prompt_of(example: dict) -> list[dict]:
    if "prompt" in example:
        return example["prompt"]
    messages = example["messages"]
    first_reply = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:first_reply]


def build_sft_trainer(args: SFTRecipeConfig) -> tuple[SFTTrainer, Counter, Dataset | None]:
    set_seed(args.seed)
    tokenizer, model = load_stage(args, AutoModelForCausalLM, "a pretrained hf_gpt folder or Hub id")
    if args.max_length is None or args.max_length > model.config.max_position_embeddings:
        args.max_length = model.config.max_position_embeddings
    rows, report = prepare_sft_dataset(load_rows(args), tokenizer, args.max_length, args.system_prompt)
    logger.warning("SFT data: %s", dict(report))
    train, evaluation = hold_out(rows, args)
    if "messages" in rows.column_names:
        args.assistant_only_loss = True
    else:
        args.completion_only_loss = True
    peft_config = None
    if args.use_peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                 target_modules=args.lora_target_modules, task_type="CAUSAL_LM")
    trainer = with_throughput(SFTTrainer)(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                         processing_class=tokenizer, peft_config=peft_config)
    return trainer, report, evaluation


def sft(args: SFTRecipeConfig, resume_from_checkpoint: str | bool = True) -> SFTTrainer:
    """Fine-tune, evaluate, answer held-out prompts, save (adapter and/or merged model) with tokenizer and code."""
    with RunFolder(args, "SFT", resume_from_checkpoint) as run:
        trainer, report, evaluation = build_sft_trainer(args)
        run.begin()
        run.train(trainer)
        metrics = final_evaluation(trainer) if evaluation is not None else {}
        trainer.save_model(args.output_dir)
        tokenizer = trainer.processing_class
        if args.use_peft and args.merge_adapter and trainer.is_world_process_zero():
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(Path(args.output_dir) / "merged")
            tokenizer.save_pretrained(Path(args.output_dir) / "merged")
        if evaluation is not None:  # every rank generates (under FSDP each forward needs them all); rank 0 writes
            write_sample_answers(trainer, evaluation, report, metrics)
        if trainer.is_world_process_zero():
            write_summary(args.output_dir, "sft", {"eval_loss": metrics.get("eval_loss"),
                                                   "data_report": dict(report), "epochs": trainer.state.epoch},
                          data=args.data_files or args.dataset_name, base_model=args.model_name_or_path,
                          steps=trainer.state.global_step, throughput=trainer.throughput_summary())
    return trainer


def write_sample_answers(trainer: SFTTrainer, evaluation: Dataset, report: Counter, metrics: dict) -> None:
    """Greedy answers to the first held-out prompts, in samples.md and samples.json."""
    args = trainer.args
    held_out = [evaluation[i] for i in range(min(args.num_sample_answers, len(evaluation)))]
    answers = sample_answers(trainer.model, trainer.processing_class, [_prompt_of(e) for e in held_out])
    if not trainer.is_world_process_zero():
        return
    prompts = [_prompt_of(example)[-1]["content"] for example in held_out]
    with open(Path(args.output_dir) / "samples.md", "w", encoding="utf-8") as f:
        f.write(f"# SFT samples\n\ndata: {dict(report)}\neval: {metrics}\n\n")
        for prompt, answer in zip(prompts, answers):
            f.write(f"- prompt: {prompt!r}\n  answer: {answer!r}\n")
    (Path(args.output_dir) / "samples.json").write_text(json.dumps(
        [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)], indent=1, ensure_ascii=False))
