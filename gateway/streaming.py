"""SSE framing exactly as TGI writes it, and the pieces of TGI's response JSON.

TGI (axum `Event::json_data`) writes `data:{json}\\n\\n` with no space after the colon and sends a
`:\\n\\n` keep-alive comment after 15 s of silence. Each of our events also carries an `id:` line
(`<request id>:<seq>`), which TGI's and OpenAI's clients ignore and which lets a stream be resumed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from common.protocol import Token, TopToken

__all__ = ["sse", "KEEP_ALIVE", "token_json", "top_json", "stream_token_json", "stream_top_json", "json_float",
           "tgi_token_event", "dumps", "SSEResponse"]

KEEP_ALIVE = b":\n\n"

# msgspec writes the bytes json.dumps(ensure_ascii=False, separators=(",", ":")) writes (same key
# order, same string escapes) at a fraction of the cost, except for floats in exponent form
# (Python writes 1e-05 and 1e+16, msgspec 0.00001 and 1e16): event floats go through `json_float`.
_encode = msgspec.json.Encoder().encode


def dumps(obj: Any) -> str:
    return _encode(obj).decode()


def sse(obj: Any, event_id: str | None = None) -> bytes:
    if event_id is None:
        return b"data:" + _encode(obj) + b"\n\n"
    return b"id:" + event_id.encode() + b"\ndata:" + _encode(obj) + b"\n\n"


def json_float(x: float) -> float | msgspec.Raw | None:
    """`x` as an SSE event carries it: Python's repr, and null for NaN and infinities."""
    if x == 0.0 or 1e-4 <= abs(x) < 1e16:  # where Python's repr and msgspec agree (tested)
        return x
    if math.isfinite(x):
        return msgspec.Raw(repr(x).encode())
    return None


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# For JSON bodies (json.dumps downstream).
def token_json(t: Token) -> dict[str, Any]:
    return {"id": t.id, "text": t.text, "logprob": _finite(t.logprob), "special": t.special}


def top_json(top: list[TopToken]) -> list[dict[str, Any]]:
    return [{"id": x.id, "text": x.text, "logprob": _finite(x.logprob), "special": x.special} for x in top]


# For SSE events (`sse`, msgspec downstream).
def stream_token_json(t: Token) -> dict[str, Any]:
    return {"id": t.id, "text": t.text, "logprob": json_float(t.logprob), "special": t.special}


def stream_top_json(top: list[TopToken]) -> list[dict[str, Any]]:
    return [{"id": x.id, "text": x.text, "logprob": json_float(x.logprob), "special": x.special} for x in top]


def tgi_token_event(t: Token, index: int, generated_text: str | None = None,
                    details: dict[str, Any] | None = None) -> bytes:
    """TGI's stream event for token `t`, the `index`-th of its stream, with the id line `<req_id>:<seq>`.

    Every event but a stream's last has no text, no details and usually no top tokens: those are
    formatted in one step, byte for byte what `sse` writes for the same dict (tested), at a
    third of the cost. Floats are Python's repr, as json.dumps writes them.
    """
    if t.top_tokens or generated_text is not None or details is not None:
        event: dict[str, Any] = {"index": index, "token": stream_token_json(t)}
        if t.top_tokens:
            event["top_tokens"] = stream_top_json(t.top_tokens)
        event["generated_text"] = generated_text
        event["details"] = details
        return sse(event, f"{t.req_id}:{t.seq}")
    logprob = repr(t.logprob).encode() if math.isfinite(t.logprob) else b"null"
    return _TOKEN_EVENT % (t.req_id.encode(), t.seq, index, t.id, _encode(t.text), logprob,
                           b"true" if t.special else b"false")


_TOKEN_EVENT = (b'id:%s:%d\ndata:{"index":%d,"token":{"id":%d,"text":%s,"logprob":%s,"special":%s},'
                b'"generated_text":null,"details":null}\n\n')


class SSEResponse(StreamingResponse):
    """An event stream that calls `on_close` exactly once, even when the client leaves before the
    body starts (then the generator never runs, and its own cleanup with it)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"X-Accel-Buffering": "no", "cache-control": "no-cache", **headers})
        self._content = content
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._content.aclose()  # type: ignore[attr-defined]
            finally:
                self._on_close()
