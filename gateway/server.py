"""Serve the gateway with uvicorn; on SIGTERM stop accepting and let open streams finish."""

from __future__ import annotations

import logging

import uvicorn
from starlette.applications import Starlette

from common.config import GatewayConfig
from common.log import setup_logging
from gateway.app import build_app

__all__ = ["run"]

log = logging.getLogger("genfleet.gateway")


class _Server(uvicorn.Server):
    """uvicorn's server, with the app told to refuse new work the moment shutdown begins."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._starlette = app

    def handle_exit(self, sig: int, frame: object) -> None:
        ctx = getattr(self._starlette.state, "ctx", None)
        if ctx is not None:
            ctx.draining = True  # /health turns 503 and new requests are refused
        super().handle_exit(sig, frame)


def run(config: GatewayConfig) -> None:
    setup_logging(config.fleet.json_output, config.fleet.log_level, "gateway")
    app = build_app(config)
    uv_config = uvicorn.Config(
        app,
        host=config.hostname,
        port=config.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(config.graceful_termination_timeout),
        limit_concurrency=None,
        # uvloop and httptools (uvicorn[standard]); "auto" falls back to asyncio and h11 without them.
        # Server.run() builds the loop from this choice; asyncio.run(serve()) would ignore it.
        loop="auto",
        http="auto",
    )
    _Server(uv_config, app).run()
    log.info("gateway stopped")
