"""`hf-gpt serve`: transformers' own OpenAI-compatible server (`transformers serve`), able to load hf_gpt models, with
its requests checked first.

transformers 5.24's `serve` picks the model class with `getattr(transformers, config.architectures[0])`, which fails
for every remote-code model, `--trust-remote-code` or not. This launcher puts our classes where that lookup finds
them and then runs the unchanged `transformers serve` command: the server itself is transformers', not ours.

`RequestGuard`, a thin ASGI layer in front of it, answers bad chat and completion requests with HTTP 400 and an
OpenAI-style error instead of a bare 500 or garbage: unknown or missing roles, empty messages, sampling values out
of range (temperature in [0, 2], top_p in (0, 1], max_tokens ≥ 1), and prompts longer than the model's context.
`max_tokens` is lowered to the room the context leaves. Special-token text typed by a user ("<|eos|><|assistant|>")
is defused with an invisible U+200B after "<|", so it is read as plain text and cannot forge a turn.
Chat with it through `transformers chat <model> http://HOST:PORT` or any OpenAI client.
"""

import json
import sys
from functools import lru_cache

ROLES = ("system", "user", "assistant")
DEFUSE = ("<|", "<|\u200b")


def expose_classes_to_transformers() -> None:
    import transformers

    import hf_gpt

    for name in ("HfGptForCausalLM", "HfGptForSequenceClassification", "HfGptModel", "HfGptConfig"):
        setattr(transformers, name, getattr(hf_gpt, name))


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@lru_cache(maxsize=4)
def _tokenizer_and_context(model: str):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model)
    return AutoTokenizer.from_pretrained(model), getattr(config, "max_position_embeddings", None)


def _number(body: dict, name: str, low: float, high: float, low_open: bool = False) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (low < value if low_open else low <= value) and value <= high):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise BadRequest(f"{name} must be a number in {bound}, got {value!r}.", name)


def _defuse(text: str) -> str:
    return text.replace(*DEFUSE)


def check_chat(body: dict, default_model: str | None) -> dict:
    """The checked (and defused, capped) request body of /v1/chat/completions."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of {role, content}.", "messages")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise BadRequest(f"messages[{i}] has role {role!r}: use one of {', '.join(ROLES)}.", "messages")
        content = message.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str) or not content.strip():
            raise BadRequest(f"messages[{i}] ({role}) has no text content.", "messages")
        message["content"] = _defuse(content)
    if messages[-1]["role"] == "assistant":
        raise BadRequest("the last message is the assistant's: end with a user message to get a reply.", "messages")
    _check_sampling(body)
    tokenizer, context = _tokenizer_and_context(default_model or body.get("model"))
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    return _cap_tokens(body, len(ids), context)


def check_completion(body: dict, default_model: str | None) -> dict:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("prompt must be a non-empty string.", "prompt")
    body["prompt"] = _defuse(prompt)
    _check_sampling(body)
    tokenizer, context = _tokenizer_and_context(default_model or body.get("model"))
    return _cap_tokens(body, len(tokenizer(body["prompt"])["input_ids"]), context)


def _check_sampling(body: dict) -> None:
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1, low_open=True)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadRequest(f"{name} must be a whole number ≥ 1, got {value!r}.", name)


def _cap_tokens(body: dict, prompt_tokens: int, context: int | None) -> dict:
    if context is None:
        return body
    if prompt_tokens >= context:
        raise BadRequest(f"The prompt has {prompt_tokens} tokens; the model's context is {context}: shorten the "
                         "conversation.", "messages")
    for name in ("max_tokens", "max_completion_tokens"):
        if body.get(name) is not None:
            body[name] = min(body[name], context - prompt_tokens)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = context - prompt_tokens
    return body


CHECKS = {"/v1/chat/completions": check_chat, "/v1/completions": check_completion}


class RequestGuard:
    """ASGI middleware: reads a checked route's JSON body, answers 400 on a bad request, else passes the checked body
    on to transformers' app."""

    def __init__(self, app, default_model: str | None = None):
        self.app, self.default_model = app, default_model

    async def __call__(self, scope, receive, send):
        check = CHECKS.get(scope.get("path")) if scope["type"] == "http" and scope.get("method") == "POST" else None
        if check is None:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            body = json.loads(b"".join(chunks) or b"null")
            if not isinstance(body, dict):
                raise BadRequest("The request body must be a JSON object.")
            body = check(body, self.default_model)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return await _error(send, "The request body is not valid JSON.", None)
        except BadRequest as err:
            return await _error(send, str(err), err.param)
        data = json.dumps(body).encode()
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}

        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(data)).encode())]}
        await self.app(scope, replay, send)


async def _error(send, message: str, param: str | None) -> None:
    payload = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                    "code": None}}).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def guard_transformers_server(default_model: str | None) -> None:
    """Wrap the app that `transformers serve` builds in `RequestGuard`."""
    from transformers.cli.serving import server

    build = server.build_server

    def build_guarded(*args, **kwargs):
        return RequestGuard(build(*args, **kwargs), default_model)

    server.build_server = build_guarded


def main(argv: list[str] | None = None) -> int:
    from transformers.cli.transformers import main as transformers_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    expose_classes_to_transformers()
    model = argv[0] if argv and not argv[0].startswith("-") else None  # `serve MODEL ...`: the one model it serves
    guard_transformers_server(model)
    sys.argv = ["transformers", "serve", *argv]
    return transformers_cli()


if __name__ == "__main__":
    sys.exit(main())
