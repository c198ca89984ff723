"""Sampling from a trained model: temperature scales the logits (p ∝ exp(z/τ)); top-p keeps the smallest set of
tokens whose probabilities sum to p; top-k keeps the k most likely. Temperature 0 means greedy decoding.

Low temperature for factual answers, high for creative ones; `hf-gpt generate` and `hf-gpt chat` expose all of it.
"""

import contextlib
import sys
from collections.abc import Iterator

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel, TextStreamer

from .chat import CHAT_COMMANDS, defuse, measuring_lengths


def sampling_config(model: PreTrainedModel, max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
                    top_k: int = 0, repetition_penalty: float = 1.0) -> GenerationConfig:
    """A GenerationConfig with only the filters asked for: top_p=1.0 and top_k=0 switch those off."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}.")
    greedy = temperature == 0
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else top_k,
        repetition_penalty=repetition_penalty,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
        bos_token_id=model.config.bos_token_id,
    )


def load(model_name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """Tokenizer and model in eval mode. Code from the folder or repo runs only when `trust_remote_code` is set, as
    in transformers; hf_gpt models never need it where hf_gpt is installed."""
    from .loading import load_model_and_tokenizer

    tokenizer, model = load_model_and_tokenizer(AutoModelForCausalLM, model_name_or_path, "the model",
                                                trust_remote_code, tokenizer_kwargs=dict(padding_side="left",
                                                                                         revision=revision),
                                                revision=revision)
    return tokenizer, model.eval()


@torch.no_grad()
def complete(model, tokenizer, prompts: list[str] | list[list[dict]], max_new_tokens: int = 64, seed: int | None = 0,
             skip_special_tokens: bool = True, **generate_kwargs) -> list[str]:
    """The one way hf_gpt generates: text prompts are continued, chat prompts (lists of messages) answered after the
    assistant marker, in one left-padded batch with the new tokens capped by the context. With a `seed`, sampling
    draws from an RNG forked off the caller's: a training run's dropout and data order do not depend on it."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # every row continues from its last real token
    try:
        if isinstance(prompts[0], list):
            batch = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, padding=True,
                                                  return_tensors="pt", return_dict=True)
        else:
            batch = tokenizer(prompts, return_tensors="pt", padding=True, split_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    width, context = batch["input_ids"].shape[1], model.config.max_position_embeddings
    if width >= context:
        raise ValueError(f"The prompt has {width} tokens and the model's context is {context}: shorten it.")
    was_training = model.training
    model.eval()
    # Seeded: from an RNG forked off the caller's (a training run's stays as it was); unseeded: from the caller's.
    forked = torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else [])
    with forked if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(**batch.to(model.device), max_new_tokens=min(max_new_tokens, context - width),
                             pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
    model.train(was_training)
    # Rows that stopped early are padded to the longest: the padding is not part of their answer.
    rows = [[t for t in row if t != tokenizer.pad_token_id] for row in out[:, width:].tolist()]
    return tokenizer.batch_decode(rows, skip_special_tokens=skip_special_tokens)


@torch.no_grad()
def generate_text(model_name_or_path: str, prompts: str | list[str], seed: int | None = None, stream: bool = False,
                  trust_remote_code: bool = False, **sampling) -> list[str]:
    """Continue each prompt; returns the new text only."""
    tokenizer, model = load(model_name_or_path, trust_remote_code=trust_remote_code)
    prompts = [prompts] if isinstance(prompts, str) else prompts
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    return complete(model, tokenizer, prompts, sampling.get("max_new_tokens", 64), seed, streamer=streamer,
                    generation_config=sampling_config(model, **sampling))


@torch.no_grad()
def chat_reply(model, tokenizer, messages: list[dict], stream: bool = False, **sampling) -> str:
    """One assistant turn for a conversation (system prompt included), stopping at eos; a conversation longer than
    the context is a ValueError (from `complete`)."""
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    return complete(model, tokenizer, [messages], sampling.get("max_new_tokens", 64), seed=None, streamer=streamer,
                    generation_config=sampling_config(model, **sampling))[0]


def fit_conversation(tokenizer, messages: list[dict], context: int, room: int) -> tuple[list[dict], int]:
    """The conversation without its oldest turns (the system prompt stays) until `room` tokens are left for the
    reply in the model's context; and how many turns were dropped. The last message always stays."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    measuring_lengths(tokenizer)
    length = lambda m: len(tokenizer.apply_chat_template(m, add_generation_prompt=True, return_dict=True)["input_ids"])
    dropped = 0
    while len(turns) > 1 and length(system + turns) + room > context:
        turns, dropped = turns[1:], dropped + 1
        while len(turns) > 1 and turns[0]["role"] != "user":  # start at a question, not in the middle of an exchange
            turns, dropped = turns[1:], dropped + 1
    return system + turns, dropped


def chat_loop(model_name_or_path: str, system: str | None, lines: Iterator[str] | None = None,
              trust_remote_code: bool = False, **sampling) -> None:
    """A multi-turn chat on stdin/stdout that keeps what fits the model's context; commands in CHAT_COMMANDS."""
    tokenizer, model = load(model_name_or_path, trust_remote_code=trust_remote_code)
    context, room = model.config.max_position_embeddings, sampling.get("max_new_tokens", 64)
    fresh = lambda: [{"role": "system", "content": defuse(system)}] if system else []
    messages = fresh()
    print(f"({CHAT_COMMANDS}.)")
    lines = lines or iter(sys.stdin.readline, "")
    while True:
        print("you> ", end="", flush=True)
        line = next(lines, "").strip()
        if not line or line == "/quit":
            return
        if line == "/reset" or line.split()[0] == "/system":
            if line != "/reset":
                system = line.removeprefix("/system").strip() or None
            messages = fresh()
            print(f"(a new conversation; system prompt: {system!r})")
            continue
        if line.startswith("/"):
            print(f"(unknown command {line.split()[0]}: {CHAT_COMMANDS}.)")
            continue
        messages, dropped = fit_conversation(tokenizer, [*messages, {"role": "user", "content": defuse(line)}],
                                             context, room)
        if dropped:
            print(f"(the {dropped} oldest turns no longer fit the model's {context}-token context: dropped)")
        print("gpt> ", end="", flush=True)
        try:
            reply = chat_reply(model, tokenizer, messages, stream=True, **sampling)
        except ValueError as err:  # one message longer than the context: say so and keep chatting
            print(f"({err})")
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": reply})
