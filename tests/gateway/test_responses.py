"""A client that leaves cancels its request on every route, streamed or not (issue 13.2)."""

from __future__ import annotations

import json
import time

import pytest

from tests.gateway.harness import GatewayServer, ScriptedWorker, open_raw, post_head

pytestmark = pytest.mark.timeout(60)

_SLOW = {"inputs": "go SLOW", "parameters": {"max_new_tokens": 50}}
_STEP = 0.3  # the scripted worker's seconds per token for a SLOW prompt


def _wait(condition, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize(("route", "body"), [
    ("/generate", _SLOW),
    ("/", _SLOW),
    ("/generate_stream", _SLOW),
    ("/v1/completions", {"prompt": "go SLOW", "max_tokens": 50}),
    ("/v1/completions", {"prompt": "go SLOW", "max_tokens": 50, "stream": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "go SLOW"}], "max_tokens": 50}),
])
def test_a_disconnect_cancels_the_request_within_two_steps(gateway: GatewayServer, worker: ScriptedWorker,
                                                           route: str, body: dict) -> None:  # type: ignore[type-arg]
    raw = json.dumps(body).encode()
    sock = open_raw(gateway, post_head(route, len(raw)), raw)
    assert _wait(lambda: len(worker.received) == 1)
    sock.close()
    closed_at = time.monotonic()
    assert _wait(lambda: bool(worker.cancels)), "no cancel reached the worker"
    took = time.monotonic() - closed_at
    (cancel,) = worker.cancels
    assert cancel.req_id == worker.received[0].req_id and cancel.reason == "client_disconnected"
    assert took < 2 * _STEP, f"the cancel took {took:.2f} s"
    assert _wait(lambda: gateway.ctx.permits.used == 0 and gateway.ctx.queue_client.in_flight == 0)
