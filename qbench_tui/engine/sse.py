"""Incremental Server-Sent Events framing, on bytes.

Runs once per network read of every stream, so it never decodes UTF-8 or JSON: a `data:` payload is
returned as the raw bytes between the field prefix and the line end. Splitting on b"\\n" is safe at any byte
offset, because UTF-8 continuation bytes are never 0x0A / 0x0D.
"""
from __future__ import annotations

_DONE = b"[DONE]"


class SSEDecoder:
    """feed(chunk) -> payloads of the events completed by this chunk, in order.

    - events end at a blank line; lines end with "\\n" or "\\r\\n" (a lone "\\r" terminator, legal in SSE but
      emitted by no OpenAI-compatible server we know, is not supported);
    - lines starting with ":" are comments (keep-alive pings) and are skipped;
    - several `data:` lines in one event are joined with "\\n", as the SSE spec says;
    - other fields (event:, id:, retry:) are ignored;
    - `data: [DONE]` sets `done`; everything after it is ignored.
    """

    __slots__ = ("_buf", "_data", "done")

    def __init__(self) -> None:
        self._buf = b""
        self._data: bytes | None = None
        self.done = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if self.done:
            return []
        if not self._buf and self._data is None and chunk.startswith(b"data: "):
            # fast path, the usual read: exactly one whole `data: X\n\n` event
            n = len(chunk)
            if chunk.find(b"\n") == n - 2 and chunk.endswith(b"\n\n") and n > 8 and chunk[n - 3] != 13:
                value = chunk[6 : n - 2]
                if value == _DONE:
                    self.done = True
                    return []
                return [value]
        buf = self._buf + chunk if self._buf else bytes(chunk)
        out: list[bytes] = []
        pos = 0
        find = buf.find
        while True:
            nl = find(b"\n", pos)
            if nl < 0:
                break
            end = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
            start, pos = pos, nl + 1
            if end == start:  # blank line: dispatch
                data = self._data
                if data is not None:
                    self._data = None
                    if data == _DONE:
                        self.done = True
                        self._buf = b""
                        return out
                    out.append(data)
                continue
            if buf[start] == 58:  # ":" comment
                continue
            if buf.startswith(b"data:", start):
                vstart = start + 5
                if vstart < end and buf[vstart] == 32:
                    vstart += 1
                value = buf[vstart:end]
                self._data = value if self._data is None else self._data + b"\n" + value
        self._buf = buf[pos:] if pos < len(buf) else b""
        return out

    def close(self) -> list[bytes]:
        """End of stream: dispatch an event whose terminating blank line never came.

        The SSE spec discards such an event; we return it so a caller can still read a final usage chunk
        from a server that forgot the blank line.
        """
        out: list[bytes] = []
        if not self.done:
            if self._buf:
                out = self.feed(b"\n\n")
            elif self._data is not None:
                out = self.feed(b"\n")
        self._buf = b""
        self._data = None
        return out
