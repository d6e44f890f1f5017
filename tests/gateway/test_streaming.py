"""The relay's hot path without a server: bursts of events, one chunk per burst, byte-exact SSE.

The events are compared with what the gateway wrote before it batched and used msgspec: one
json.dumps(ensure_ascii=False, separators=(",", ":")) per event, one event per chunk.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from common.errors import GenfleetError
from common.protocol import Accepted, Error, Finish, Token, TopToken
from common.sampling_params import SamplingParams
from gateway.generation import Relay
from gateway.inbox import Inbox
from gateway.metrics import GatewayMetrics
from gateway.queue_client import RequestState
from gateway.routes_generate import Outcome, _stream
from gateway.streaming import KEEP_ALIVE, json_float, sse, tgi_token_event
from gateway.validation import Validated

pytestmark = pytest.mark.timeout(30)


def _old_sse(obj: Any, event_id: str | None = None) -> bytes:
    head = f"id:{event_id}\n" if event_id is not None else ""
    return f"{head}data:{json.dumps(obj, ensure_ascii=False, separators=(',', ':'), allow_nan=False)}\n\n".encode()


def _old_token_event(t: Token, index: int, generated_text: str | None = None,
                     details: dict[str, Any] | None = None) -> bytes:
    def num(x: float) -> float | None:
        return x if math.isfinite(x) else None

    event: dict[str, Any] = {"index": index,
                             "token": {"id": t.id, "text": t.text, "logprob": num(t.logprob), "special": t.special}}
    if t.top_tokens:
        event["top_tokens"] = [{"id": x.id, "text": x.text, "logprob": num(x.logprob), "special": x.special}
                               for x in t.top_tokens]
    event["generated_text"] = generated_text
    event["details"] = details
    return _old_sse(event, f"{t.req_id}:{t.seq}")


_TEXTS = ["", " word", "é", "東京", "🚀", 'quote " and \\ backslash', "\n\t\r\x00\x01\x1f\x7f", "\u2028\u2029",
          "</script>", "\ufffd", "a" * 300]
_FLOATS = [0.0, -0.0, -0.1, -1e-05, -3.2e-07, -5e-324, -1e-4, -0.00010000000000000002, -9.999999999999999e-05,
           -12.5, -1e16, -1.5e300, float("nan"), float("-inf"), float("inf")]


def _random_tokens(n: int, seed: int = 0) -> list[Token]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = rng.choice(_TEXTS) if rng.random() < 0.5 else "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(3))
        lp = rng.choice(_FLOATS) if rng.random() < 0.5 else -rng.random() * 10 ** rng.uniform(-8, 3)
        top = [TopToken(rng.randrange(1 << 16), rng.choice(_TEXTS), rng.choice(_FLOATS), rng.random() < 0.5)
               for _ in range(rng.choice([0, 0, 2]))]
        out.append(Token(f"req-{rng.randrange(1000)}", 0, i, rng.randrange(1 << 20), text, lp, rng.random() < 0.1, top))
    return out


def test_token_events_are_byte_identical_to_json_dumps() -> None:
    details = {"finish_reason": "length", "generated_tokens": 3, "seed": None, "input_length": 2}
    for i, t in enumerate(_random_tokens(3000)):
        assert tgi_token_event(t, i + 1) == _old_token_event(t, i + 1)
        assert tgi_token_event(t, i + 1, "all the text", details) == _old_token_event(t, i + 1, "all the text", details)


def test_json_float_matches_python_repr() -> None:
    rng = random.Random(1)
    values = _FLOATS + [-rng.random() * 10 ** rng.uniform(-30, 30) for _ in range(20000)]
    for x in values:
        want = json.dumps(x if math.isfinite(x) else None)
        assert sse({"x": json_float(x)}) == f'data:{{"x":{want}}}\n\n'.encode(), x


def test_sse_matches_json_dumps_for_plain_objects() -> None:
    obj = {"error": "Request failed: \"quoted\" \u00e9\n", "error_type": "generation", "n": [1, 2.5, None, True]}
    assert sse(obj) == _old_sse(obj)
    assert sse(obj, "r:1") == _old_sse(obj, "r:1")


# -- the inbox ------------------------------------------------------------------------------------
async def test_inbox_wakes_once_for_a_burst_and_times_out() -> None:
    inbox: Inbox[int] = Inbox()
    assert not await inbox.wait(0.01)  # nothing: the timeout
    waiter = asyncio.ensure_future(inbox.wait(5.0))
    await asyncio.sleep(0)
    for i in range(5):
        inbox.put_nowait(i)
    assert await waiter is True
    assert inbox.qsize() == 5 and inbox.drain() == [0, 1, 2, 3, 4] and inbox.empty()
    inbox.put_nowait(7)
    assert await inbox.wait(5.0) is True  # already queued: no wait at all
    inbox.clear()
    started = time.monotonic()
    assert await inbox.wait(0.05) is False and time.monotonic() - started >= 0.04


async def test_inbox_wait_can_be_cancelled() -> None:
    inbox: Inbox[int] = Inbox()
    waiter = asyncio.ensure_future(inbox.wait(5.0))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    inbox.put_nowait(1)  # the cancelled waiter is not woken again
    assert await inbox.wait(0.01) is True


# -- the relay: bursts ----------------------------------------------------------------------------
def _relay() -> Relay:
    fleet = SimpleNamespace(ttl=5.0, is_alive=lambda worker: True,
                            state=SimpleNamespace(redis_ok=True, serving=(object(),)))
    return Relay(queue_client=SimpleNamespace(), fleet=fleet, metrics=SimpleNamespace())  # type: ignore[arg-type]


def _state() -> RequestState:
    return RequestState("r", "m", [1, 2], SamplingParams(max_new_tokens=8), 0.0, owner="w")


def _tok(seq: int, req_id: str = "r") -> Token:
    return Token(req_id, 0, seq, 1000 + seq, f" w{seq}", -0.5, False)


async def test_relay_yields_everything_queued_as_one_burst() -> None:
    state = _state()
    state.queue.put_nowait(Accepted("r", 0, "w"))
    for seq in range(4):
        state.queue.put_nowait(_tok(seq))
    state.queue.put_nowait(_tok(2))  # a duplicate is dropped
    run = _relay().run(state)
    assert await run.__anext__() == [_tok(0), _tok(1), _tok(2), _tok(3)]
    state.queue.put_nowait(_tok(4))
    state.queue.put_nowait(Finish("r", 0, 5, "length", 2, None))
    assert await run.__anext__() == [_tok(4)]
    with pytest.raises(StopAsyncIteration):
        await run.__anext__()
    assert state.finish is not None and state.finish.seq == 5 and state.relayed_ids == [1000, 1001, 1002, 1003, 1004]


async def test_relay_yields_the_tokens_before_an_error_then_raises() -> None:
    state = _state()
    for event in (_tok(0), _tok(1), Error("r", 0, "generation", "boom")):
        state.queue.put_nowait(event)
    run = _relay().run(state)
    assert await run.__anext__() == [_tok(0), _tok(1)]
    with pytest.raises(GenfleetError, match="boom"):
        await run.__anext__()


async def test_relay_yields_the_tokens_before_a_gap_even_when_no_attempt_is_left() -> None:
    state = _state()
    for event in (_tok(0), _tok(1), _tok(3), _tok(4)):
        state.queue.put_nowait(event)
    relay = _relay()
    relay.max_attempts = 1  # the gap cannot be repaired by a continuation
    run = relay.run(state)
    assert await run.__anext__() == [_tok(0), _tok(1)]
    with pytest.raises(GenfleetError, match="events lost before seq 3"):
        await run.__anext__()


async def test_relay_yields_an_empty_burst_after_keep_alive_seconds_of_silence() -> None:
    state = _state()
    run = _relay().run(state, keep_alive=0.3)
    started = time.monotonic()
    assert await run.__anext__() == []
    assert 0.3 <= time.monotonic() - started < 2.0
    state.queue.put_nowait(_tok(0))
    assert await run.__anext__() == [_tok(0)]
    await run.aclose()


# -- the TGI stream: one chunk per burst ----------------------------------------------------------
class _ScriptedRelay:
    """Relay.run's contract, scripted: the given bursts, then the Finish on the state."""

    def __init__(self, bursts: list[list[Token]], finish: Finish | None, error: GenfleetError | None = None) -> None:
        self.bursts, self.finish, self.error = bursts, finish, error

    async def submit(self, state: RequestState) -> None:
        pass

    async def run(self, state: RequestState, keep_alive: float = 0.0) -> AsyncIterator[list[Token]]:
        for burst in self.bursts:
            yield burst
        if self.error is not None:
            raise self.error
        state.finish = self.finish


class _QueueClient:
    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def new_state(self, model: str, ids: list[int], params: SamplingParams, deadline: float) -> RequestState:
        return RequestState("r", model, ids, params, deadline)

    def finish(self, state: RequestState) -> None:
        state.done = True

    async def cancel(self, state: RequestState) -> None:
        state.done = True
        self.cancelled.append(state.req_id)


def _ctx(relay: _ScriptedRelay) -> Any:
    queue_client = _QueueClient()
    return SimpleNamespace(fleet=SimpleNamespace(state=SimpleNamespace(redis_ok=True)), queue_client=queue_client,
                           model_id="m", deadline=0.0, metrics=GatewayMetrics(100, 200), relay=relay)


def _validated(details: bool = True) -> Validated:
    return Validated([1, 2], SamplingParams(max_new_tokens=8), 1, False, details, False, "prompt")


async def _chunks(ctx: Any, v: Validated) -> list[bytes]:
    return [c async for c in _stream(None, ctx, v, Outcome())]  # type: ignore[arg-type]


async def test_a_burst_goes_out_as_one_chunk_with_the_events_of_one_token_each() -> None:
    tokens = [_tok(i) for i in range(6)]
    finish = Finish("r", 0, 6, "length", 2, None)
    ctx = _ctx(_ScriptedRelay([tokens[:4], [], tokens[4:]], finish))
    chunks = await _chunks(ctx, _validated())
    # One token behind: the first burst's chunk holds events 1-3, the keep-alive passes through,
    # the second burst's chunk holds 4-5 and the last event carries text and details.
    details = {"finish_reason": "length", "generated_tokens": 6, "seed": None, "input_length": 2}
    assert chunks == [
        b"".join(_old_token_event(t, t.seq + 1) for t in tokens[:3]),
        KEEP_ALIVE,
        b"".join(_old_token_event(t, t.seq + 1) for t in tokens[3:5]),
        _old_token_event(tokens[5], 6, " w0 w1 w2 w3 w4 w5", details),
    ]
    assert ctx.metrics.counters.get("tgi_request_success") == 1 and ctx.queue_client.cancelled == []


async def test_an_error_after_tokens_flushes_the_held_event_first() -> None:
    tokens = [_tok(i) for i in range(3)]
    ctx = _ctx(_ScriptedRelay([tokens], None, GenfleetError("generation", "worker lost")))
    chunks = await _chunks(ctx, _validated(details=False))
    assert chunks == [
        _old_token_event(tokens[0], 1) + _old_token_event(tokens[1], 2),
        _old_token_event(tokens[2], 3) + _old_sse({"error": "worker lost", "error_type": "generation"}),
    ]
    assert ctx.queue_client.cancelled == ["r"]  # the request is stopped wherever it still runs
