"""The simulator's `POST /tokenize`: vLLM's request and answer shape, counted exactly as the simulator counts a
request's prompt (the same rendering and characters-per-token), so a client that sizes prompts through it gets
the prompt_tokens the simulator's usage then reports."""
from __future__ import annotations

import json
from typing import Any

from .profile import Profile
from .requests import ApiError, render_chat, text_tokens

_GEN_PROMPT = "<|im_start|>assistant\n"


def tokenize(data: Any, profile: Profile, model_name: str) -> tuple[int, bytes]:
    """(status, JSON body) for one /tokenize request."""
    try:
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", "BadRequestError")
        model = data.get("model")
        if model is not None and model != model_name:
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError")
        if isinstance(data.get("messages"), list):
            text = render_chat(data["messages"], profile.default_system_prompt)
            if data.get("add_generation_prompt", True) is False:
                text = text[: -len(_GEN_PROMPT)]
        elif isinstance(data.get("prompt"), str):
            text = data["prompt"]
        else:
            raise ApiError(400, "[{'type': 'missing', 'loc': ('body', 'prompt'), 'msg': 'Field required'}]",
                           "Bad Request")
    except ApiError as e:
        return e.status, e.body
    n, _ = text_tokens(text, profile.block_size, profile.chars_per_token)
    body = {"count": n, "max_model_len": profile.max_model_len, "tokens": list(range(n)), "token_strs": None}
    return 200, json.dumps(body, separators=(",", ":")).encode()
