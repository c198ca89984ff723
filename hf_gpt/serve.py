"""`hf-gpt serve`: transformers' own OpenAI-compatible server (`transformers serve`), able to load hf_gpt models, with
every request checked against one schema first.

transformers 5.24's `serve` picks the model class with `getattr(transformers, config.architectures[0])`, which fails
for every remote-code model, `--trust-remote-code` or not. This launcher puts our classes where that lookup finds
them and then runs the unchanged `transformers serve` command: the server itself is transformers', not ours.

`RequestGuard`, a thin ASGI layer in front of it, owns the request contract:
- each field of /v1/chat/completions and /v1/completions is listed in `CHAT_FIELDS` / `COMPLETION_FIELDS` with its
  check; a field the server would ignore is accepted only at its neutral value (n = 1, logprobs false, ...), any
  other value or an unknown field is HTTP 400 naming it, as is every malformed value (no traceback, ever);
- bodies over `MAX_BODY_BYTES` are refused (413) before they are parsed; checking and tokenising run off the event
  loop, so a long prompt never stalls other requests;
- the model named by a request loads through hf_gpt's one loader (remote code only with `--trust-remote-code`, never
  a question on stdin): an unknown model is 400, a folder that fails to load 500, each with one line;
- `max_tokens` is lowered to the room the context leaves; special-token text typed by a user is defused;
- `n` > 1 (without streaming) asks transformers' server n times and returns the n choices.
Chat with it through `transformers chat <model> http://HOST:PORT` or any OpenAI client.
"""

import asyncio
import json
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from .chat import defuse, normalize_messages

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any prompt a model's context holds
SEED_LIMIT = 2**63


def expose_classes_to_transformers() -> None:
    import transformers

    import hf_gpt

    for name in ("HfGptForCausalLM", "HfGptForSequenceClassification", "HfGptModel", "HfGptConfig"):
        setattr(transformers, name, getattr(hf_gpt, name))


class BadRequest(ValueError):
    """An HTTP error answered to the client: 400 (its request) unless `status` says otherwise."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


# ---------------------------------------------------------------- the schema: one checker per field


def _number(low: float, high: float, low_open: bool = False) -> Callable:
    def check(name: str, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                (low < value if low_open else low <= value) and value <= high):
            raise BadRequest(f"{name} must be a number in {'(' if low_open else '['}{low}, {high}], got {value!r}.",
                             name)
        return value
    return check


def _whole(low: int, high: int | None = None) -> Callable:
    def check(name: str, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bounds = f"≥ {low}" if high is None else f"in [{low}, {high}]"
            raise BadRequest(f"{name} must be a whole number {bounds}, got {value!r}.", name)
        return value
    return check


def _bool(name: str, value):
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, got {value!r}.", name)
    return value


def _string(name: str, value):
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string.", name)
    return value


def _stop(name: str, value):
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not 1 <= len(stops) <= 4 or not all(isinstance(s, str) and s for s in stops):
        raise BadRequest(f"{name} must be a non-empty string or a list of 1 to 4 of them.", name)
    return value


def _logit_bias(name: str, value):
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and k.isdigit() and not isinstance(v, bool) and isinstance(v, (int, float))
            and -100 <= v <= 100 for k, v in value.items()):
        raise BadRequest(f"{name} must map token ids (as strings) to numbers in [-100, 100].", name)
    return value


def _generation_config(name: str, value):
    """transformers' extension (`transformers chat` sends it): a GenerationConfig as a JSON string."""
    from transformers import GenerationConfig

    try:
        fields = json.loads(value) if isinstance(value, str) else None
        if not isinstance(fields, dict):
            raise ValueError("not a JSON object")
        GenerationConfig(**fields).validate()
    except (ValueError, TypeError) as err:
        raise BadRequest(f"{name} must be a JSON string of generation settings ({' '.join(str(err).split())}).",
                         name) from None
    return value


def _only(neutral: tuple, why: str) -> Callable:
    """A field this server does not implement: accepted at its neutral value(s), refused otherwise."""
    def check(name: str, value):
        if value not in neutral:
            raise BadRequest(f"{name}={json.dumps(value)[:60]} is not supported by hf-gpt serve: {why}.", name)
        return value
    return check


def _n(name: str, value):
    return _whole(1, 16)(name, value)


def _messages(name: str, value):
    try:
        messages = normalize_messages(value, name)
    except ValueError as err:
        raise BadRequest(str(err), name) from None
    for i, turn in enumerate(value):
        extra = set(turn) - {"role", "content"}
        if extra:
            raise BadRequest(f"{name}[{i}] has fields {sorted(extra)} that this server does not use: send role and "
                             "content only.", name)
    if messages[-1]["role"] == "assistant":
        raise BadRequest("the last message is the assistant's: end with a user message to get a reply.", name)
    return messages


def _prompt(name: str, value):
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string.", name)
    return defuse(value)


SAMPLING = {
    "model": _string, "stream": _bool, "seed": _whole(0, SEED_LIMIT - 1), "temperature": _number(0, 2),
    "top_p": _number(0, 1, low_open=True), "max_tokens": _whole(1), "stop": _stop,
    "frequency_penalty": _number(-1, 2, low_open=True),  # transformers applies repetition_penalty = 1 + this
    "logit_bias": _logit_bias, "generation_config": _generation_config, "n": _n,
    "presence_penalty": _only((0, 0.0), "use frequency_penalty"),
    "user": _only((), "the server keeps no per-user state"),
    "stream_options": _only(({"include_usage": False},), "streamed replies carry no usage chunk here"),
}
CHAT_FIELDS = {
    **SAMPLING, "messages": _messages, "max_completion_tokens": _whole(1),
    "logprobs": _only((False,), "log-probabilities are not returned"),
    "top_logprobs": _only((0,), "log-probabilities are not returned"),
    "response_format": _only(({"type": "text"},), "replies are plain text (no JSON mode)"),
    "tools": _only(([],), "the chat template has no tools"), "tool_choice": _only(("none",), "no tools"),
    "parallel_tool_calls": _only((False,), "no tools"),
}
COMPLETION_FIELDS = {
    **SAMPLING, "prompt": _prompt, "echo": _only((False,), "the prompt is not repeated"),
    "logprobs": _only((0,), "log-probabilities are not returned"), "best_of": _only((1,), "use n"),
    "suffix": _only(("",), "the model does not fill in the middle"),
}


def check_fields(body: dict, fields: dict) -> dict:
    """The body with every field checked; null means unset (as in OpenAI's API), unknown fields are refused."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    checked = {}
    for name, value in body.items():
        if name not in fields:
            raise BadRequest(f"Unknown field {name!r}: hf-gpt serve takes {', '.join(sorted(fields))}.", name)
        if value is not None:
            checked[name] = fields[name](name, value)
    return checked


# ---------------------------------------------------------------- the model a request names


@lru_cache(maxsize=4)
def _model_info(model: str, trust_remote_code: bool) -> tuple:
    """(tokenizer, context length) of a model, through hf_gpt's one loader."""
    from .loading import check_weights, load_config, load_tokenizer

    config = load_config(model, trust_remote_code)
    check_weights(model)  # transformers' server would load them later and answer a bare 500
    return load_tokenizer(model, trust_remote_code), getattr(config, "max_position_embeddings", None)


def model_info(model: str | None, trust_remote_code: bool = False) -> tuple:
    if not model:
        raise BadRequest("model is required: the server is not pinned to one (start it as `hf-gpt serve MODEL`).",
                         "model")
    from .loading import RemoteCodeRefused

    try:
        return _model_info(model, trust_remote_code)
    except RemoteCodeRefused as err:
        raise BadRequest(f"{err} (start the server with it)", "model") from None
    except (ValueError, FileNotFoundError, OSError) as err:
        if Path(model).exists():  # a folder that is there but does not load: the server's problem
            raise BadRequest(f"Cannot load model {model}: {err}", "model", status=500) from None
        raise BadRequest(f"Unknown model {model!r}: {err}", "model") from None


def _resolve_model(body: dict, pinned: str | None) -> str | None:
    if pinned and body.get("model") not in (None, pinned):
        raise BadRequest(f"This server serves {pinned} only; the request names {body['model']!r}.", "model")
    return pinned or body.get("model")


def _check_generation(body: dict, pinned: str | None, trust_remote_code: bool, fields: dict, param: str,
                      count: Callable) -> dict:
    """A generation request: its fields, then its model, then its prompt's length (`count(tokenizer, body)`)."""
    body = check_fields(body, fields)
    if param not in body:
        raise BadRequest(f"{param} is required.", param)
    tokenizer, context = model_info(_resolve_model(body, pinned), trust_remote_code)
    if any(int(k) >= len(tokenizer) for k in body.get("logit_bias", {})):
        raise BadRequest(f"logit_bias names a token id ≥ the vocabulary size {len(tokenizer)}.", "logit_bias")
    if body.get("n", 1) > 1 and body.get("stream"):
        raise BadRequest("n > 1 is answered without streaming: set stream to false, or send n requests.", "n")
    return _cap_tokens(body, count(tokenizer, body), context, param)


def check_chat(body: dict, pinned: str | None, trust_remote_code: bool = False) -> dict:
    """The checked (defused, capped) body of /v1/chat/completions."""
    return _check_generation(body, pinned, trust_remote_code, CHAT_FIELDS, "messages", lambda tokenizer, b: len(
        tokenizer.apply_chat_template(b["messages"], add_generation_prompt=True, return_dict=True)["input_ids"]))


def check_completion(body: dict, pinned: str | None, trust_remote_code: bool = False) -> dict:
    """The checked (defused, capped) body of /v1/completions."""
    return _check_generation(body, pinned, trust_remote_code, COMPLETION_FIELDS, "prompt",
                             lambda tokenizer, b: len(tokenizer(b["prompt"])["input_ids"]))


def check_load_model(body: dict, pinned: str | None, trust_remote_code: bool = False) -> dict:
    """/load_model (used by `transformers chat`): {"model": name}, loadable by the rules above."""
    body = check_fields(body, {"model": _string})
    model_info(_resolve_model(body, pinned), trust_remote_code)
    return body


def _cap_tokens(body: dict, prompt_tokens: int, context: int | None, param: str) -> dict:
    if context is None:
        return body
    if prompt_tokens >= context:
        raise BadRequest(f"The prompt has {prompt_tokens} tokens; the model's context is {context}: shorten the "
                         "conversation.", param)
    room = context - prompt_tokens
    for name in ("max_tokens", "max_completion_tokens"):
        if body.get(name) is not None:
            body[name] = min(body[name], room)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = room
    if "generation_config" in body:  # it overrides max_tokens in transformers' server: cap it too
        fields = json.loads(body["generation_config"])
        fields["max_new_tokens"] = min(fields.get("max_new_tokens") or room, room)
        fields.pop("max_length", None)
        body["generation_config"] = json.dumps(fields)
    return body


CHECKS = {"/v1/chat/completions": check_chat, "/v1/completions": check_completion, "/load_model": check_load_model}
OPEN_POSTS = {"/reset"}  # transformers' own, no body


# ---------------------------------------------------------------- the ASGI layer


class RequestGuard:
    """ASGI middleware: reads a checked route's body (up to MAX_BODY_BYTES), checks it in a worker thread, answers
    an OpenAI-style error or passes the checked body on to transformers' app (n times for n > 1)."""

    def __init__(self, app, pinned: str | None = None, trust_remote_code: bool = False):
        self.app, self.pinned, self.trust_remote_code = app, pinned, trust_remote_code

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") in OPEN_POSTS:
            return await self.app(scope, receive, send)
        check = CHECKS.get(scope.get("path"))
        if check is None:
            return await _error(send, f"hf-gpt serve answers POST {', '.join(CHECKS)}; not {scope.get('path')}.",
                                None, 404)
        try:
            raw = await _read_body(scope, receive)
            body = await asyncio.to_thread(self._check, check, raw)
        except BadRequest as err:
            return await _error(send, str(err), err.param, err.status)
        n = body.pop("n", 1)
        if n == 1:
            return await self.app(_with_length(scope, data := json.dumps(body).encode()), _replay(data, receive),
                                  send)
        await self._several(scope, receive, send, body, n)

    def _check(self, check: Callable, raw: bytes) -> dict:
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("The request body is not valid JSON.") from None
        except RecursionError:
            raise BadRequest("The request body is nested too deeply to be a request.") from None
        return check(body, self.pinned, self.trust_remote_code)

    async def _several(self, scope, receive, send, body: dict, n: int) -> None:
        """n choices: n requests to transformers' server (seed, if given, + i for the i-th), merged into one reply."""
        replies = []
        for i in range(n):
            one = {**body, **({"seed": (body["seed"] + i) % SEED_LIMIT} if "seed" in body else {})}
            status, headers, payload = await _call(self.app, _with_length(scope, data := json.dumps(one).encode()),
                                                   _replay(data, receive))
            if status != 200:
                return await _send(send, status, headers, payload)
            replies.append(json.loads(payload))
        merged = replies[0]
        merged["choices"] = [{**reply["choices"][0], "index": i} for i, reply in enumerate(replies)]
        if all(reply.get("usage") for reply in replies):
            tokens = sum(reply["usage"]["completion_tokens"] for reply in replies)
            merged["usage"].update(completion_tokens=tokens, total_tokens=merged["usage"]["prompt_tokens"] + tokens)
        await _send(send, 200, [(b"content-type", b"application/json")], json.dumps(merged).encode())


async def _read_body(scope, receive) -> bytes:
    declared = dict(scope.get("headers") or []).get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(f"The request body is larger than {MAX_BODY_BYTES} bytes.", None, 413)
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(f"The request body is larger than {MAX_BODY_BYTES} bytes.", None, 413)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _with_length(scope, data: bytes) -> dict:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(len(data)).encode())]}


def _replay(data: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}
    return replay


async def _call(app, scope, receive) -> tuple[int, list, bytes]:
    """Run an ASGI app to completion and collect its response."""
    start, chunks = {}, []

    async def capture(message):
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    return start.get("status", 500), start.get("headers", []), b"".join(chunks)


async def _send(send, status: int, headers: list, payload: bytes) -> None:
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


async def _error(send, message: str, param: str | None, status: int = 400) -> None:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    payload = json.dumps({"error": {"message": message, "type": kind, "param": param, "code": None}}).encode()
    await _send(send, status, [(b"content-type", b"application/json")], payload)


def guard_transformers_server(pinned: str | None, trust_remote_code: bool = False) -> None:
    """Wrap the app that `transformers serve` builds in `RequestGuard`."""
    from transformers.cli.serving import server

    build = server.build_server

    def build_guarded(*args, **kwargs):
        return RequestGuard(build(*args, **kwargs), pinned, trust_remote_code)

    server.build_server = build_guarded


def main(argv: list[str] | None = None) -> int:
    from transformers.cli.transformers import main as transformers_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    expose_classes_to_transformers()
    model = argv[0] if argv and not argv[0].startswith("-") else None  # `serve MODEL ...`: the one model it serves
    guard_transformers_server(model, "--trust-remote-code" in argv or "--trust_remote_code" in argv)
    sys.argv = ["transformers", "serve", *argv]
    return transformers_cli()


if __name__ == "__main__":
    sys.exit(main())
