"""Server-sent events: the framing of each API, the one keep-alive, and the streaming response.

TGI (axum `Event::json_data`) writes `data:{json}\\n\\n` with no space after the colon; OpenAI
writes `data: {json}\\n\\n` and ends with `data: [DONE]`. Both get a `:\\n\\n` comment after
KEEP_ALIVE_INTERVAL seconds of silence, so proxies with idle timeouts keep the stream open. Token
events of both also carry an `id:` line (`<request id>:<seq>`), which clients ignore and which
a client sends back as `Last-Event-ID` to resume the stream (gateway/resume.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.types import Scope, Send

from gateway.responses import WatchedResponse

__all__ = ["KEEP_ALIVE", "KEEP_ALIVE_INTERVAL", "DONE", "sse", "openai_sse", "json_float", "encode",
           "SSEResponse"]

KEEP_ALIVE = b":\n\n"
KEEP_ALIVE_INTERVAL = 15.0  # seconds without an event before a keep-alive comment (TGI's default)
DONE = b"data: [DONE]\n\n"  # with the space: huggingface_hub compares the whole line to it

# msgspec writes the bytes json.dumps(ensure_ascii=False, separators=(",", ":")) writes (same key
# order, same string escapes) at a fraction of the cost, except for floats in exponent form
# (Python writes 1e-05 and 1e+16, msgspec 0.00001 and 1e16): event floats go through `json_float`.
encode = msgspec.json.Encoder().encode


def sse(obj: Any, event_id: str | None = None) -> bytes:
    """One TGI event: `data:` without a space, after an optional `id:` line."""
    if event_id is None:
        return b"data:" + encode(obj) + b"\n\n"
    return b"id:" + event_id.encode() + b"\ndata:" + encode(obj) + b"\n\n"


def openai_sse(obj: Any, event_id: str | None = None) -> bytes:
    """One OpenAI event, framed as OpenAI's own API frames it: `data: ` with the space, which
    clients that strip the exact prefix "data: " (vLLM's benchmark client) depend on; after an
    optional `id:` line, which OpenAI's clients ignore."""
    if event_id is None:
        return b"data: " + encode(obj) + b"\n\n"
    return b"id:" + event_id.encode() + b"\ndata: " + encode(obj) + b"\n\n"


def json_float(x: float) -> float | msgspec.Raw | None:
    """`x` as an SSE event carries it: Python's repr, and null for NaN and infinities."""
    if x == 0.0 or 1e-4 <= abs(x) < 1e16:  # where Python's repr and msgspec agree (tested)
        return x
    if math.isfinite(x):
        return msgspec.Raw(repr(x).encode())
    return None


class SSEResponse(WatchedResponse):
    """An event stream: each chunk of `events` as it comes, a keep-alive after every
    KEEP_ALIVE_INTERVAL seconds of silence, and `events` closed however the stream ends."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str],
                 keep_alive: float = KEEP_ALIVE_INTERVAL) -> None:
        super().__init__(headers={"X-Accel-Buffering": "no", "cache-control": "no-cache", **headers})
        self._events = events
        self._keep_alive = keep_alive
        self._last_write = 0.0

    async def respond(self, scope: Scope, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self._last_write = time.monotonic()
        pinger = asyncio.ensure_future(self._ping(send))
        try:
            async for chunk in self._events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._last_write = time.monotonic()
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
            await self._events.aclose()  # type: ignore[attr-defined]
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _ping(self, send: Send) -> None:
        # One timer per stream that wakes once per interval, not one per event.
        while True:
            await asyncio.sleep(max(0.0, self._last_write + self._keep_alive - time.monotonic()))
            if time.monotonic() - self._last_write >= self._keep_alive:
                await send({"type": "http.response.body", "body": KEEP_ALIVE, "more_body": True})
                self._last_write = time.monotonic()
