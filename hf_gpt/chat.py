"""Chat messages, one set of rules for every stage and the server: the roles, the system prompt, turning text, HH
transcripts and OpenAI content parts into messages, and defusing special-token text a user typed.

Design choices:
- Special-token text inside a message ("<|eos|><|assistant|>") would become real special tokens when the chat
  template is tokenised, forging a turn or an ending. `defuse` puts an invisible U+200B after every "<|", so it
  stays plain text. SFT, reward and PPO data, `hf-gpt chat` and the server all go through `normalize_messages`.
- A system prompt is added unless the conversation starts with its own system turn (which wins).
"""

import re
from collections.abc import Iterable

from .tokenizer import ROLES

DEFUSE = ("<|", "<|\u200b")
# `hf-gpt chat`'s commands, said at its start and in its --help.
CHAT_COMMANDS = ("/reset starts a new conversation, /system <text> sets the system prompt (and starts anew), /quit "
                 "or an empty line ends")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def defuse(text: str) -> str:
    """Special-token text typed by a user, made plain text: "<|eos|>" → "<|\u200beos|>"."""
    return text.replace(*DEFUSE)


def content_text(content, where: str) -> str:
    """A message's content as text: a string, or OpenAI content parts of type "text" joined."""
    if isinstance(content, list):
        kinds = {part.get("type") if isinstance(part, dict) else type(part).__name__ for part in content}
        if kinds - {"text"}:
            raise ValueError(f"{where} has content parts of type {sorted(map(str, kinds - {'text'}))}: this model "
                             "reads text only.")
        content = "".join(part.get("text") if isinstance(part.get("text"), str) else "" for part in content)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ValueError(f"{where} has content of type {type(content).__name__}: give text.")
    return content


def normalize_messages(messages, where: str = "messages", allow_empty_content: bool = False) -> list[dict]:
    """A checked, defused copy of a conversation: a non-empty list of {role, content} with known roles and text
    content; ValueError naming the turn otherwise."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where} must be a non-empty list of {{role, content}} turns.")
    normalized = []
    for i, turn in enumerate(messages):
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in ROLES:
            raise ValueError(f"{where}[{i}] has role {role!r}: use one of {', '.join(ROLES)}.")
        text = content_text(turn.get("content"), f"{where}[{i}] ({role})")
        if not text.strip() and not allow_empty_content:
            raise ValueError(f"{where}[{i}] ({role}) has no text content.")
        normalized.append({"role": role, "content": defuse(text)})
    return normalized


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """`messages` with a system turn first: `system_prompt` is added unless it is None/empty or the conversation
    already starts with its own system turn (which wins). The one rule SFT, the reward model and RL all follow."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": defuse(system_prompt)}, *messages]


def text_to_messages(prompt: str) -> list[dict]:
    """A prompt as text → chat turns; Anthropic HH transcripts ("\\n\\nHuman: ...\\n\\nAssistant:") keep their turns."""
    parts = _HH_TURN.split("\n\n" + prompt.lstrip("\n") if prompt.lstrip().startswith("Human:") else prompt)
    if len(parts) < 3:
        return [{"role": "user", "content": prompt.strip()}]
    roles = {"Human": "user", "Assistant": "assistant"}
    messages = [{"role": roles[who], "content": text.strip()} for who, text in zip(parts[1::2], parts[2::2])]
    if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()  # the open "Assistant:" that the chosen/rejected reply completes
    return messages


def prompt_to_messages(prompt, system_prompt: str | None = None, where: str = "prompt") -> list[dict]:
    """A prompt (text, an HH transcript, or chat messages with text or content parts) as checked, defused chat
    messages with the system prompt rule applied; an empty prompt is an error."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where} is empty: there is nothing to answer.")
        prompt = text_to_messages(prompt)
    elif not isinstance(prompt, list):
        raise ValueError(f"{where} must be text or a list of chat messages, got {type(prompt).__name__}.")
    return with_system_prompt(normalize_messages(prompt, where), system_prompt)


def measuring_lengths(tokenizer) -> None:
    """Mark transformers' "sequence length is longer than the specified maximum" warning as given: a caller that
    measures lengths handles long rows itself (drops, shortens or counts them), so the warning would be noise."""
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True


def prompt_length(tokenizer, messages: list[dict]) -> int:
    """Tokens of a conversation rendered up to the assistant's turn (what generation starts from)."""
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])


def prompts_that_fit(prompts: Iterable, tokenizer, context: int, room: int, system_prompt: str | None = None,
                     drop: bool = False) -> list[int]:
    """Indices of the prompts that leave `room` new tokens in the context. A bad prompt is an error naming its row;
    one too long is an error too, or with `drop` left out and counted. PPO (room = response_length) and GRPO/RLOO
    (room = max_completion_length) share it."""
    keep, total = [], 0
    measuring_lengths(tokenizer)
    for i, prompt in enumerate(prompts):
        total += 1
        try:
            messages = prompt_to_messages(prompt, system_prompt)
        except ValueError as err:
            raise ValueError(f"Prompt row {i}: {err}") from None
        n = prompt_length(tokenizer, messages)
        if n + room <= context:
            keep.append(i)
        elif not drop:
            raise ValueError(f"Prompt row {i} has {n} tokens; with {room} new tokens that exceeds the model's context "
                             f"of {context}. Shorten or filter the prompts, or set drop_long_prompts.")
    if len(keep) < total:
        print(f"Prompts: dropped {total - len(keep)} of {total} longer than the context allows")
    return keep
