"""SSE framing exactly as TGI writes it, and the pieces of TGI's response JSON.

TGI (axum `Event::json_data`) writes `data:{json}\\n\\n` with no space after the colon and sends a
`:\\n\\n` keep-alive comment after 15 s of silence. Each of our events also carries an `id:` line
(`<request id>:<seq>`), which TGI's and OpenAI's clients ignore and which lets a stream be resumed.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from common.protocol import Token, TopToken

__all__ = ["sse", "KEEP_ALIVE", "token_json", "top_json", "dumps", "SSEResponse"]

KEEP_ALIVE = b":\n\n"


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def sse(obj: Any, event_id: str | None = None) -> bytes:
    head = f"id:{event_id}\n" if event_id is not None else ""
    return f"{head}data:{dumps(obj)}\n\n".encode()


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def token_json(t: Token) -> dict[str, Any]:
    return {"id": t.id, "text": t.text, "logprob": _finite(t.logprob), "special": t.special}


def top_json(top: list[TopToken]) -> list[dict[str, Any]]:
    return [{"id": x.id, "text": x.text, "logprob": _finite(x.logprob), "special": x.special} for x in top]


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
