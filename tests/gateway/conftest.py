"""Fixtures: a scripted worker and a real gateway (uvicorn on loopback) sharing a fresh key prefix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.config import DEFAULT_MODEL_ID
from tests.gateway.harness import GatewayServer, ScriptedWorker, gateway_config, register_markers, serve_gateway


@pytest.fixture
def worker(redis_url: str, key_prefix: str) -> Iterator[ScriptedWorker]:
    w = ScriptedWorker(redis_url, key_prefix, DEFAULT_MODEL_ID).start()
    yield w
    w.stop()


@pytest.fixture
def gateway(redis_url: str, key_prefix: str, worker: ScriptedWorker) -> Iterator[GatewayServer]:
    with serve_gateway(gateway_config(redis_url, key_prefix)) as gw:
        register_markers(gw.ctx.tokenizer)
        yield gw


@pytest.fixture
def make_gateway(redis_url: str, key_prefix: str, worker: ScriptedWorker):  # type: ignore[no-untyped-def]
    """A gateway with config overrides: `with make_gateway(max_concurrent_requests=1) as gw:`."""
    from contextlib import contextmanager

    @contextmanager
    def make(**overrides: object) -> Iterator[GatewayServer]:
        with serve_gateway(gateway_config(redis_url, key_prefix, **overrides)) as gw:
            register_markers(gw.ctx.tokenizer)
            yield gw

    return make
