"""The one way into a generation: draining check, request counter, body, permit — in that order.

A request's body is read before it may take a permit, so a client that sends its headers and
then stalls holds no permit; unfinished bodies are counted apart (gateway/permits.py `Bodies`,
with a bound of its own) and must arrive within --body-read-timeout, their bytes counted against
--payload-limit as they arrive. Every generation route is an `admitted` handler: it gets the parsed body and returns
its response, and the permit is held until that response has been sent in full (a stream
included) or abandoned. Refusals are raised as GenfleetError and answered by the app's exception
handlers (gateway/errors.py).
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
from gateway.context import GatewayContext
from gateway.errors import mark_counted
from gateway.resume import parse_last_event_id

__all__ = ["admitted", "Admission", "read_json"]


@dataclass(frozen=True)
class Admission:
    """An admitted generation request, as its route handler gets it."""

    request: Request
    ctx: GatewayContext
    body: Any  # the parsed JSON (None for a GET, which has no body)
    body_size: int  # bytes
    started: float  # when it arrived (time.time())

    @property
    def request_id(self) -> str:
        return str(self.request.scope.get("state", {}).get("request_id", ""))

    def resume_point(self) -> tuple[str, int] | None:
        """(request id, seq) of the stream to resume, from `Last-Event-ID` (gateway/resume.py)."""
        headers = self.request.headers
        named = headers.get("idempotency-key") or headers.get("x-request-id")
        return parse_last_event_id(headers.get("last-event-id"), named)

    def resume_after(self, request_id: str) -> int:
        """The seq a GET of stream `request_id` resumes after (-1: from its start): the browser's
        `Last-Event-ID` header on a reconnect, else the `last_event_id` query parameter (what a
        page sets on its first EventSource, which cannot send headers)."""
        given = self.request.headers.get("last-event-id") or self.request.query_params.get("last_event_id")
        point = parse_last_event_id(given, request_id)
        return -1 if point is None else point[1]


Handler = Callable[[Admission], Awaitable[Response]]


def admitted(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        started = time.time()
        ctx: GatewayContext = request.app.state.ctx
        _refuse_if_draining(ctx)
        ctx.metrics.counters.inc("tgi_request_count")
        mark_counted(request)
        bodiless = request.method == "GET"  # GET /generate_stream/{request_id}
        raw = b"" if bodiless else await ctx.bodies.read(request)
        body = None if bodiless else parse_json(raw)
        _refuse_if_draining(ctx)  # it may have begun while the body arrived
        release = ctx.permits.acquire()
        try:
            response = await handler(Admission(request, ctx, body, len(raw), started))
        except BaseException:
            release()
            raise
        return _Holding(response, release)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def _refuse_if_draining(ctx: GatewayContext) -> None:
    if ctx.draining:
        raise GenfleetError("unavailable", "The gateway is shutting down")


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


async def read_json(request: Request) -> Any:
    """The body of a route outside the admission path (/tokenize, /chat_tokenize), as JSON."""
    ctx: GatewayContext = request.app.state.ctx
    return parse_json(await ctx.bodies.read(request))


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, a 5,000-digit number, deep nesting
        raise GenfleetError("bad_request", f"Failed to parse the request body as JSON: {exc}") from exc
