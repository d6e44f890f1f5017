"""The one way into a generation: the draining check, the request counter, the body, the permit.

Every generation route is an `admitted` handler: it gets the parsed JSON body and returns its
response; the permit it was admitted with is held until that response has been sent in full (a
stream included) or abandoned. Refusals are raised as GenfleetError and answered by the app's
exception handlers (gateway/errors.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from common.errors import GenfleetError
from gateway.context import GatewayContext, ctx_of
from gateway.errors import mark_counted

__all__ = ["admitted", "Admission", "read_json"]


@dataclass(frozen=True)
class Admission:
    """An admitted generation request, as its route handler gets it."""

    request: Request
    ctx: GatewayContext
    body: Any  # the parsed JSON
    body_size: int  # bytes
    started: float  # when it arrived (time.time())

    @property
    def request_id(self) -> str:
        return str(self.request.scope.get("state", {}).get("request_id", ""))


Handler = Callable[[Admission], Awaitable[Response]]


def admitted(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        started = time.time()
        ctx = ctx_of(request)
        if ctx.draining:
            raise GenfleetError("unavailable", "The gateway is shutting down")
        ctx.metrics.counters.inc("tgi_request_count")
        mark_counted(request)
        release = ctx.permits.acquire()
        try:
            raw = await read_body(request, ctx.config.payload_limit)
            response = await handler(Admission(request, ctx, parse_json(raw), len(raw), started))
        except BaseException:
            release()
            raise
        return _Holding(response, release)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


class _Holding(Response):
    """`inner`, with the permit released once it has been sent (or abandoned)."""

    def __init__(self, inner: Response, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._inner(scope, receive, send)
        finally:
            self._release()


async def read_json(request: Request, payload_limit: int) -> Any:
    """The body as JSON; TGI's error shape (not a 500) for every way it can be wrong."""
    return parse_json(await read_body(request, payload_limit))


async def read_body(request: Request, payload_limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > payload_limit:
        raise GenfleetError("payload_too_large", f"Payload too large: the limit is {payload_limit} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > payload_limit:
            raise GenfleetError("payload_too_large", f"Payload too large: the limit is {payload_limit} bytes")
    return body


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, a 5,000-digit number, deep nesting
        raise GenfleetError("bad_request", f"Failed to parse the request body as JSON: {exc}") from exc
