"""The server's own token count of a prompt, through vLLM's `POST /tokenize` (chat: the messages with the template
and the generation prompt, as the chat endpoint renders them; completions: the text with BOS as sent).

qbench carries no tokenizer: the one that matters is the server's, and the Hugging Face hub may be out of reach.
A server without /tokenize (404/405/501: many OpenAI-compatible proxies) makes `available` False and the dataset
falls back to its documented approximation.
"""
from __future__ import annotations

import httpx

from .prompts import Prompt, Sized
from .server_poll import side_client

_ABSENT = (404, 405, 501)


def _messages(prompt: str | list) -> list:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _text(prompt: str | list) -> str:
    """The completions endpoint's text for a prompt (request.build_request joins a message list the same way)."""
    return prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in prompt)


class ServerTokenizer:
    """`async with ServerTokenizer(url, model, headers, chat=True) as tok: n = await tok.count(prompt)`."""

    def __init__(self, url: str, model: str, headers: dict, *, chat: bool = True, ca_cert: str = "",
                 insecure: bool = False) -> None:
        self.url, self.model, self.headers, self.chat = url, model, headers, chat
        self._tls = {"ca_cert": ca_cert, "insecure": insecure}
        self._client: httpx.AsyncClient | None = None
        self.available = True
        self.max_model_len: int | None = None  # /tokenize answers it with every count
        self.calls = 0
        self.error = ""

    async def __aenter__(self) -> ServerTokenizer:
        self._client = side_client(self.url, self.headers, timeout=30.0, **self._tls)
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.__aexit__(*exc)

    async def count(self, prompt: Prompt) -> int | None:
        """The server's count, or None (and `available` False) when it cannot say."""
        if not self.available or self._client is None:
            return None
        if isinstance(prompt, Sized):
            prompt = prompt.prompt
        body: dict = {"model": self.model}
        if self.chat:
            body.update(messages=_messages(prompt), add_generation_prompt=True)
        else:
            body["prompt"] = _text(prompt)
        self.calls += 1
        try:
            r = await self._client.post("/tokenize", json=body)
        except httpx.HTTPError as e:
            self.available, self.error = False, f"/tokenize unreachable: {type(e).__name__}"
            return None
        if r.status_code != 200:
            self.available = False
            self.error = "no /tokenize on the server" if r.status_code in _ABSENT else \
                f"/tokenize answered HTTP {r.status_code}"
            return None
        try:
            data = r.json()
            self.max_model_len = data.get("max_model_len") or self.max_model_len
            return int(data["count"])
        except (ValueError, KeyError, TypeError):
            self.available, self.error = False, "/tokenize answered something that is not vLLM's"
            return None
