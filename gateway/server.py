"""Serve the gateway with uvicorn, and drain it on SIGTERM or Ctrl-C.

Draining, the gateway keeps listening: /health answers 503 (so a load balancer takes it out of
rotation) and new generation requests get 503, while open requests run on for up to
--graceful-termination-timeout seconds. Then every request still open ends with an explicit
error in its route's shape (an error event on a stream), and uvicorn shuts down. A second signal
shuts down at once.
"""

from __future__ import annotations

import logging
import time
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from common.config import GatewayConfig
from common.log import setup_logging
from gateway.app import build_app
from gateway.http_limits import bounded_protocol

__all__ = ["run", "uvicorn_config"]

log = logging.getLogger("genfleet.gateway")

_CUT_MESSAGE = "The gateway is shutting down"
_AFTER_CUT = 2.0  # seconds the cut requests get to write their error before uvicorn closes them


def uvicorn_config(app: Starlette, config: GatewayConfig) -> uvicorn.Config:
    """How the gateway is served: the same in production and in the tests."""
    protocol = bounded_protocol(config.max_header_bytes, config.max_header_count, config.header_read_timeout)
    return uvicorn.Config(
        app,
        host=config.hostname,
        port=config.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(_AFTER_CUT) + 3,  # the drain itself happens before (_Server)
        limit_concurrency=None,
        # uvloop and httptools (uvicorn[standard]); without httptools, h11 with the same head bound.
        # Server.run() builds the loop from this choice; asyncio.run(serve()) would ignore it.
        loop="auto",
        http=protocol or "h11",
        h11_max_incomplete_event_size=config.max_header_bytes,
    )


class _Server(uvicorn.Server):
    """uvicorn's server, draining on the first signal instead of closing its listener at once."""

    def __init__(self, config: uvicorn.Config, app: Starlette, grace: float) -> None:
        super().__init__(config)
        self._starlette = app
        self._grace = grace
        self._drain_since = 0.0
        self._cut_at = 0.0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        ctx = getattr(self._starlette.state, "ctx", None)
        if ctx is None or self._drain_since:
            super().handle_exit(sig, frame)  # not serving yet, or a second signal: now
            return
        self._captured_signals.append(sig)  # re-raised once the server has shut down, as uvicorn does
        self._drain_since = time.monotonic()
        ctx.draining = True
        log.info("draining: %d request(s) open, %.0f s to finish", ctx.permits.used, self._grace)

    async def on_tick(self, counter: int) -> bool:
        ctx = getattr(self._starlette.state, "ctx", None)
        if self._drain_since and not self.should_exit and ctx is not None:
            now = time.monotonic()
            if ctx.permits.used == 0:
                self.should_exit = True
            elif not self._cut_at and now - self._drain_since >= self._grace:
                log.warning("grace period over: ending %d open request(s) with an error", ctx.permits.used)
                for model in ctx.models.opened():
                    model.lifecycle.cut(_CUT_MESSAGE)
                self._cut_at = now
            elif self._cut_at and now - self._cut_at >= _AFTER_CUT:
                self.should_exit = True
        return await super().on_tick(counter)


def run(config: GatewayConfig) -> None:
    setup_logging(config.fleet.json_output, config.fleet.log_level, "gateway")
    app = build_app(config)
    _Server(uvicorn_config(app, config), app, config.fleet.graceful_termination_timeout).run()
    log.info("gateway stopped")
