"""The lifecycle's hot path without a server: bursts of events, one chunk per burst, byte-exact SSE.

The events are compared with what the gateway wrote before it batched and used msgspec: one
json.dumps(ensure_ascii=False, separators=(",", ":")) per event, one event per chunk.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from common.errors import GenfleetError
from common.protocol import Accepted, Cancel, Error, Finish, GenerateRequest, Token, TopToken
from common.sampling_params import SamplingParams
from gateway.inbox import Inbox
from gateway.lifecycle import Lifecycle
from gateway.run import Outcome, Run
from gateway.metrics import GatewayMetrics
from gateway.sse import KEEP_ALIVE, SSEResponse, json_float, sse
from gateway.tgi_shapes import tgi_stream, tgi_token_event
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
    assert inbox.drain() == [0, 1, 2, 3, 4] and inbox.drain() == []  # all five at once, then empty
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


# -- the lifecycle: bursts ------------------------------------------------------------------------
class _Queue:
    """The queue client's contract, scripted: one request, "r", whose inbox the test fills."""

    gateway_id = "gw"
    journal_ttl = 60.0

    def __init__(self) -> None:
        self.subscriptions = 1  # the pub/sub subscriptions made so far
        self.inbox: Inbox[Any] = Inbox()
        self.enqueued: list[GenerateRequest] = []
        self.cancelled: list[str] = []

    @staticmethod
    def request_id(index: int | None = None) -> str:
        return "r"

    async def claim(self, msg: GenerateRequest) -> None:
        return None  # every id is free

    async def release(self, req_id: str) -> None:
        pass

    def open(self, req_id: str) -> tuple[str, Inbox[Any]]:
        return req_id, self.inbox

    async def append_journal(self, req_id: str, msg: Any) -> None:
        pass

    async def refresh_journal(self, req_id: str) -> None:
        pass

    def close(self, req_id: str) -> None:
        pass

    async def enqueue(self, msg: GenerateRequest, relayed: Sequence[Token] = ()) -> bytes:
        self.enqueued.append(msg)
        return b"1-0"

    async def publish_cancel(self, model: str, owner: str | None, cancel: Cancel) -> None:
        self.cancelled.append(cancel.req_id)

    async def delete_entry(self, model: str, req_id: str, priority: int, entry_id: bytes) -> None:
        pass


def _lifecycle(queue: _Queue) -> Lifecycle:
    fleet = SimpleNamespace(ttl=5.0, is_alive=lambda worker: True,
                            state=SimpleNamespace(redis_ok=True, serving=(object(),)))
    return Lifecycle(queue, fleet, GatewayMetrics(100, 200), "m")  # type: ignore[arg-type]


def _run() -> Run:
    return Run([1, 2], SamplingParams(max_new_tokens=8), Outcome())


def _tok(seq: int, req_id: str = "r") -> Token:
    return Token(req_id, 0, seq, 1000 + seq, f" w{seq}", -0.5, False)


async def test_relay_yields_everything_queued_as_one_burst() -> None:
    queue = _Queue()
    queue.inbox.put_nowait(Accepted("r", 0, "w"))
    for seq in range(4):
        queue.inbox.put_nowait(_tok(seq))
    queue.inbox.put_nowait(_tok(2))  # a duplicate is dropped
    run = _run()
    bursts = _lifecycle(queue).run(run)
    assert await bursts.__anext__() == [_tok(0), _tok(1), _tok(2), _tok(3)]
    queue.inbox.put_nowait(_tok(4))
    queue.inbox.put_nowait(Finish("r", 0, 5, "length", 2, None))
    assert await bursts.__anext__() == [_tok(4)]
    with pytest.raises(StopAsyncIteration):
        await bursts.__anext__()
    finish = run.outcome.finish
    assert finish is not None and finish.seq == 5 and [t.id for t in run.outcome.tokens] == [1000, 1001, 1002, 1003, 1004]
    assert queue.cancelled == []  # it finished: nothing to stop


async def test_relay_yields_the_tokens_before_an_error_then_raises() -> None:
    queue = _Queue()
    for event in (_tok(0), _tok(1), Error("r", 0, "generation", "boom")):
        queue.inbox.put_nowait(event)
    bursts = _lifecycle(queue).run(_run())
    assert await bursts.__anext__() == [_tok(0), _tok(1)]
    with pytest.raises(GenfleetError, match="boom"):
        await bursts.__anext__()
    assert queue.cancelled == ["r"]


async def test_relay_yields_the_tokens_before_a_gap_even_when_no_attempt_is_left() -> None:
    queue = _Queue()
    for event in (_tok(0), _tok(1), _tok(3), _tok(4)):
        queue.inbox.put_nowait(event)
    lifecycle = _lifecycle(queue)
    lifecycle.max_attempts = 1  # the gap cannot be repaired by a continuation
    bursts = lifecycle.run(_run())
    assert await bursts.__anext__() == [_tok(0), _tok(1)]
    with pytest.raises(GenfleetError, match="events lost before seq 3"):
        await bursts.__anext__()


async def test_a_gap_re_enqueues_a_continuation_that_keeps_the_seed() -> None:
    queue = _Queue()
    for event in (_tok(0), _tok(2)):
        queue.inbox.put_nowait(event)
    run = Run([1, 2], SamplingParams(max_new_tokens=8, do_sample=True, seed=41), Outcome())
    bursts = _lifecycle(queue).run(run)
    assert await bursts.__anext__() == [_tok(0)]
    waiting = asyncio.ensure_future(bursts.__anext__())
    deadline = time.monotonic() + 5
    while len(queue.enqueued) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    first, second = queue.enqueued
    assert (second.attempt, second.generated_ids, second.params.max_new_tokens) == (1, [1000], 7)
    assert first.params.seed == second.params.seed == 41
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_quiet_request_continues_once_pub_sub_has_reconnected() -> None:
    queue = _Queue()
    for event in (Accepted("r", 0, "w"), _tok(0), _tok(1)):
        queue.inbox.put_nowait(event)
    bursts = _lifecycle(queue).run(_run())
    assert await bursts.__anext__() == [_tok(0), _tok(1)]
    waiting = asyncio.ensure_future(bursts.__anext__())
    await asyncio.sleep(0.6)  # quiet for two liveness checks on the same subscription
    assert len(queue.enqueued) == 1
    queue.subscriptions += 1  # the connection dropped and came back: the finish may be lost
    deadline = time.monotonic() + 5
    while len(queue.enqueued) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert (queue.enqueued[1].attempt, queue.enqueued[1].generated_ids) == (1, [1000, 1001])
    queue.inbox.put_nowait(Finish("r", 1, 2, "length", 2, None))
    with pytest.raises(StopAsyncIteration):
        await waiting
    assert len(queue.enqueued) == 2


async def test_sse_writes_a_keep_alive_after_its_interval_of_silence() -> None:
    sent: list[tuple[float, bytes]] = []
    gate = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        yield b"data:1\n\n"
        await gate.wait()
        yield b"data:2\n\n"

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append((time.monotonic(), message["body"]))
            if message["body"] == KEEP_ALIVE:
                gate.set()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never leaves
        return {}

    started = time.monotonic()
    await asyncio.wait_for(SSEResponse(events(), {}, keep_alive=0.3)({"type": "http"}, receive, send), 5)
    assert [body for _, body in sent] == [b"data:1\n\n", KEEP_ALIVE, b"data:2\n\n", b""]
    assert 0.3 <= sent[1][0] - started < 2.0


# -- the TGI stream: one chunk per burst ----------------------------------------------------------
def _validated(details: bool = True) -> Validated:
    return Validated([1, 2], (SamplingParams(max_new_tokens=8),), False, details, False, "prompt")


async def test_a_burst_goes_out_as_one_chunk_with_the_events_of_one_token_each() -> None:
    tokens = [_tok(i) for i in range(6)]
    queue = _Queue()
    lifecycle = _lifecycle(queue)
    for t in tokens[:4]:
        queue.inbox.put_nowait(t)
    run = _run()
    chunks = []
    async for chunk in tgi_stream(lifecycle.run(run), _validated(), run.outcome, lifecycle.metrics):
        chunks.append(chunk)
        if len(chunks) == 1:  # the second burst arrives once the first is out
            for t in tokens[4:]:
                queue.inbox.put_nowait(t)
            queue.inbox.put_nowait(Finish("r", 0, 6, "length", 2, None))
    # One token behind: the first burst's chunk holds events 1-3, the second burst's chunk holds
    # 4-5 and the last event carries text and details.
    details = {"finish_reason": "length", "generated_tokens": 6, "seed": None, "input_length": 2}
    assert chunks == [
        b"".join(_old_token_event(t, t.seq + 1) for t in tokens[:3]),
        b"".join(_old_token_event(t, t.seq + 1) for t in tokens[3:5]),
        _old_token_event(tokens[5], 6, " w0 w1 w2 w3 w4 w5", details),
    ]
    assert lifecycle.metrics.counters.get("tgi_request_success") == 1 and queue.cancelled == []


async def test_an_error_after_tokens_flushes_the_held_event_first() -> None:
    tokens = [_tok(i) for i in range(3)]
    queue = _Queue()
    lifecycle = _lifecycle(queue)
    for event in (*tokens, Error("r", 0, "generation", "worker lost")):
        queue.inbox.put_nowait(event)
    run = _run()
    chunks = [c async for c in tgi_stream(lifecycle.run(run), _validated(details=False), run.outcome,
                                          lifecycle.metrics)]
    assert chunks == [
        _old_token_event(tokens[0], 1) + _old_token_event(tokens[1], 2),
        _old_token_event(tokens[2], 3) + _old_sse({"error": "worker lost", "error_type": "generation"}),
    ]
    assert queue.cancelled == ["r"]  # the request is stopped wherever it still runs
