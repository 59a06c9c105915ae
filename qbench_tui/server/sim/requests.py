"""An OpenAI request body -> what the simulated engine needs, or the error vLLM 0.13 would answer.

The prompt is never tokenized: one 'token' per chars_per_token characters (or per id of a token-id prompt), and
chained hashes of full blocks stand in for vLLM's block hashes, so prefix caching sees the same sharing a real
tokenizer would give repeated text.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    from .profile import Profile


class Generate(NamedTuple):
    """A validated generate request."""

    prompt_len: int
    block_hashes: list[int]
    max_tokens: int  # after defaulting and clamping to the context left
    max_tokens_param: int | None  # as the client sent it (the request_params_max_tokens histogram)
    stream: bool
    target: int  # output tokens the simulated model will produce before it stops
    text: str | None = None  # the prompt's text as counted and hashed (None: a token-id prompt)


def error_body(message: str, err_type: str, code: int, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": err_type, "param": param, "code": code}},
                      separators=(",", ":")).encode()


class ApiError(Exception):
    def __init__(self, status: int, message: str, err_type: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = error_body(message, err_type, status, param)


def render_chat(messages: list[Any], default_system: str) -> str:
    """ChatML rendering, like Qwen's template; the text is the 'token' source for counts and prefix hashes."""
    parts: list[str] = []
    if default_system and not (messages and isinstance(messages[0], dict) and messages[0].get("role") == "system"):
        parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise ApiError(400, f"[{{'type': 'missing', 'loc': ('body', 'messages'), 'msg': 'Field required', "
                                f"'input': {m!r}}}]", "Bad Request")
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        elif content is None:
            content = ""
        parts.append(f"<|im_start|>{m['role']}\n{content}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def text_tokens(text: str, block_size: int, chars_per_token: int) -> tuple[int, list[int]]:
    """(token count, chained hashes of full blocks) with one 'token' per chars_per_token characters. A block is
    hashed only when its characters are all there: a last block whose final 'token' is short would hash other text
    than the same block of a longer prompt (a next turn's) has, and miss there."""
    n = max(1, -(-len(text) // chars_per_token))
    step = block_size * chars_per_token
    h = 0x5EED
    hashes = []
    for i in range(len(text) // step):
        h = hash((h, text[i * step:(i + 1) * step]))
        hashes.append(h)
    return n, hashes


def more_hashes(text: str, hashes: list[int], block_size: int, chars_per_token: int) -> list[int]:
    """The chain of `hashes` (text_tokens of a prefix of `text`) continued over `text`'s further full blocks."""
    step = block_size * chars_per_token
    h = hashes[-1] if hashes else 0x5EED
    out = []
    for i in range(len(hashes), len(text) // step):
        h = hash((h, text[i * step:(i + 1) * step]))
        out.append(h)
    return out


def id_tokens(ids: list[int], block_size: int) -> tuple[int, list[int]]:
    n = max(1, len(ids))
    h = 0x5EED
    hashes = []
    for i in range(len(ids) // block_size):
        h = hash((h, tuple(ids[i * block_size:(i + 1) * block_size])))
        hashes.append(h)
    return n, hashes


async def read_json(receive: Callable) -> Any:
    """The request body as a JSON object; None when the client went away first."""
    body = b""
    more = True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    try:
        data = json.loads(body)
    except ValueError as e:
        raise ApiError(400, f"[{{'type': 'json_invalid', 'loc': ('body', {e.pos if hasattr(e, 'pos') else 0}), "
                            f"'msg': 'JSON decode error', 'input': {{}}, 'ctx': {{'error': {str(e)!r}}}}}]",
                       "Bad Request") from None
    if not isinstance(data, dict):
        raise ApiError(400, "[{'type': 'model_attributes_type', 'loc': ('body',), 'msg': 'Input should be a "
                            "valid dictionary or object to extract fields from'}]", "Bad Request")
    return data


def parse_generate(data: dict[str, Any], chat: bool, profile: Profile, model_name: str,
                   draw_answer_len: Callable[[], int]) -> Generate:
    """Validate a /v1/chat/completions or /v1/completions body as vLLM 0.13 does; raise ApiError where it would."""
    p = profile
    if chat:
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise ApiError(400, "[{'type': 'missing', 'loc': ('body', 'messages'), 'msg': 'Field required'}]",
                           "Bad Request")
    else:
        prompt = data.get("prompt")
        if prompt is None:
            raise ApiError(400, "[{'type': 'missing', 'loc': ('body', 'prompt'), 'msg': 'Field required'}]",
                           "Bad Request")
    stream = bool(data.get("stream", False))
    if data.get("stream_options") is not None and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", "BadRequestError")
    model = data.get("model")
    if model is not None and model != model_name:
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError")
    text: str | None = None
    if chat:
        text = render_chat(messages, p.default_system_prompt)
        n, hashes = text_tokens(text, p.block_size, p.chars_per_token)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        n, hashes = id_tokens(prompt, p.block_size)
    else:
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt else ""
        text = str(prompt)
        n, hashes = text_tokens(text, p.block_size, p.chars_per_token)
    mml = p.max_model_len
    if n >= mml:
        raise ApiError(400, f"This model's maximum context length is {mml} tokens. However, your request has "
                            f"{n} input tokens. Please reduce the length of the input messages. None",
                       "BadRequestError")
    max_tokens = data.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = data.get("max_tokens")
    param = max_tokens
    if max_tokens is None:
        max_tokens = mml - n
    else:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}.", "BadRequestError",
                           "max_tokens")
        if p.clamp_max_tokens:
            if max_tokens > mml:
                raise ApiError(400, f"max_tokens={max_tokens} cannot be greater than max_model_len={mml}. "
                                    f"Please request fewer output tokens.", "BadRequestError", "max_tokens")
            max_tokens = min(max_tokens, mml - n)
        elif n + max_tokens > mml:
            raise ApiError(400, f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This "
                                f"model's maximum context length is {mml} tokens and your request has {n} input "
                                f"tokens ({max_tokens} > {mml} - {n}).", "BadRequestError")
    if data.get("ignore_eos"):
        target = max_tokens
    else:
        target = draw_answer_len()
        min_tokens = data.get("min_tokens") or 0
        if isinstance(min_tokens, int) and min_tokens > target:
            target = min_tokens
        if target > max_tokens:
            target = max_tokens
    return Generate(n, hashes, max_tokens, param, stream, target, text)
