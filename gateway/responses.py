"""Responses that are produced while the client is watched: a disconnect cancels the work.

A generation route's answer is computed after the route returns (`DeferredResponse`) or streamed
(`sse.SSEResponse`); either way the work runs in a task beside a listener on the connection, and
a client that leaves cancels it at once, which cancels its fleet requests (gateway/lifecycle.py)
instead of letting them run to the end for nobody. Errors raised before the response starts
reach the app's exception handlers (gateway/errors.py) like any route's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["WatchedResponse", "DeferredResponse"]

log = logging.getLogger("genfleet.gateway")


class WatchedResponse(Response):
    """Runs `respond` while listening for the client's disconnect; subclasses write the answer."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def respond(self, scope: Scope, send: Send) -> None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        work = asyncio.ensure_future(self.respond(scope, send))
        watch = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                work.result()  # an error before the response started reaches the exception handlers
                return
            log.info("client disconnected; cancelling its request")
            work.cancel()
            await asyncio.wait({work})  # its cleanup (the fleet cancel) runs to the end
            if not work.cancelled() and work.exception() is not None:
                log.info("request ended after its client left: %s", work.exception())
        finally:
            watch.cancel()
            if not work.done():  # we are being cancelled ourselves
                work.cancel()


class DeferredResponse(WatchedResponse):
    """A response computed only once it is being sent, so that the computation is watched."""

    def __init__(self, produce: Callable[[], Awaitable[Response]]) -> None:
        super().__init__()
        self._produce = produce

    async def respond(self, scope: Scope, send: Send) -> None:
        response = await self._produce()
        await response(scope, _no_receive, send)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _no_receive() -> dict[str, str]:
    raise RuntimeError("a deferred response does not read the request")
