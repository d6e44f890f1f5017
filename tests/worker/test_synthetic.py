"""The synthetic engine: LLMEngine's interface, one token per running request per fixed tick."""

from __future__ import annotations

import time

import pytest

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from worker.request import Request
from worker.synthetic import SyntheticEngine


def _Req(req_id: str, n_prompt: int = 5, max_new: int = 4, seed: int = 0,  # noqa: N802
         deadline: float = 0.0, top_n: int = 0) -> Request:
    return Request(req_id, list(range(1, n_prompt + 1)), SamplingParams(max_new_tokens=max_new, top_n_tokens=top_n),
                         seed, time.time(), deadline)


class _FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _engine(rate: float = 100.0, clock: _FakeClock | None = None, **kw: object) -> SyntheticEngine:
    config = WorkerConfig(synthetic_tokens_per_s=rate, **kw)  # type: ignore[arg-type]
    if clock is None:
        return SyntheticEngine(config, vocab_size=49152)
    return SyntheticEngine(config, vocab_size=49152, clock=clock, sleep=clock.sleep)


def _run(engine: SyntheticEngine) -> dict[str, list]:
    got: dict[str, list] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            got.setdefault(out.key, []).append(out)
    return got


def test_one_token_per_request_per_tick_then_length() -> None:
    clock = _FakeClock()
    engine = _engine(50.0, clock)
    engine.add_request(_Req("a", max_new=3))
    engine.add_request(_Req("b", max_new=5))
    got = _run(engine)
    assert [len(o.new_token_ids) for o in got["a"]] == [1, 1, 1]
    assert [o.finish_reason for o in got["a"]] == [None, None, "length"]
    assert [o.finish_reason for o in got["b"]][-1] == "length" and len(got["b"]) == 5
    # Five ticks: the first runs at once, each later one 1/50 s after the one before.
    assert engine.stats().steps == 5
    assert clock.slept == pytest.approx([0.02] * 4)
    assert all(o.num_prompt_tokens == 5 for o in got["a"] + got["b"])


def test_rate_holds_on_the_real_clock() -> None:
    engine = _engine(200.0)
    engine.add_request(_Req("a", max_new=30))
    started = time.monotonic()
    got = _run(engine)
    elapsed = time.monotonic() - started
    assert sum(len(o.new_token_ids) for o in got["a"]) == 30
    # 29 intervals of 5 ms; generous upper bound for a loaded CI machine.
    assert 0.14 <= elapsed < 1.5


def test_same_seed_same_tokens_and_no_special_ids() -> None:
    def tokens(seed: int) -> list[int]:
        engine = _engine(1000.0, _FakeClock())
        engine.add_request(_Req("x", max_new=50, seed=seed))
        return [t for o in _run(engine)["x"] for t in o.new_token_ids]

    first = tokens(7)
    assert first == tokens(7)
    assert first != tokens(8)
    assert min(first) >= 256 and max(first) < 49152


def test_admission_follows_max_batch_size_and_abort_frees() -> None:
    engine = _engine(100.0, _FakeClock(), max_batch_size=3)
    assert engine.num_admittable() == 3
    for i in range(3):
        engine.add_request(_Req(f"r{i}", max_new=10))
    assert engine.num_admittable() == 0
    engine.abort_request("r1")
    engine.abort_request("unknown")
    assert engine.num_admittable() == 1
    outs = engine.step()
    assert sorted(o.key for o in outs) == ["r0", "r2"]
    stats = engine.stats()
    assert stats.num_running == 2 and stats.last_batch_size == 2
    assert stats.num_free_tokens == stats.capacity_tokens - 2 * (5 + 1)


def test_expired_deadline_ends_with_timeout() -> None:
    engine = _engine(100.0, _FakeClock())
    engine.add_request(_Req("late", deadline=time.time() - 1.0))
    engine.add_request(_Req("ok", max_new=1))
    outs = {o.key: o for o in engine.step()}
    assert outs["late"].expired and outs["late"].finish_reason is None and outs["late"].new_token_ids == []
    assert outs["ok"].finish_reason == "length"
    assert not engine.has_unfinished_requests()


def test_top_tokens_and_refusals() -> None:
    engine = _engine(100.0, _FakeClock(), max_batch_total_tokens=64)
    engine.add_request(_Req("t", max_new=1, top_n=3))
    (out,) = engine.step()
    assert len(out.top_tokens) == 1 and len(out.top_tokens[0]) == 3
    assert out.top_tokens[0][0][0] == out.new_token_ids[0]
    with pytest.raises(ValueError, match="capacity"):
        engine.add_request(_Req("big", n_prompt=60, max_new=10))
    with pytest.raises(ValueError):
        _engine(0.0)


def test_worker_relays_synthetic_tokens_over_real_redis(redis_url: str, key_prefix: str, default_model_dir) -> None:  # type: ignore[no-untyped-def]
    import threading

    import redis
    from transformers import AutoTokenizer

    from common.config import FleetConfig
    from common.protocol import Finish, GenerateRequest, Token, decode_events, encode
    from common.streams import REQUEST_FIELD, Keys
    from worker.worker import Worker

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = WorkerConfig(
        fleet=FleetConfig(model_id="m", redis_url=redis_url, key_prefix=key_prefix,
                          heartbeat_interval=0.2, heartbeat_ttl=1.0, graceful_termination_timeout=5.0),
        worker_id="syn", synthetic_tokens_per_s=200.0,
    )
    engine = SyntheticEngine(config, vocab_size=len(tokenizer))
    worker = Worker(config, engine, tokenizer, device="synthetic")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.gateway_channel("g"))
    try:
        for i in range(8):
            req = GenerateRequest(f"r{i}", 0, "g", "m", [1, 2, 3], SamplingParams(max_new_tokens=20, seed=i))
            client.xadd(keys.request_stream("m"), {REQUEST_FIELD: encode(req)})
        tokens: dict[str, list[int]] = {}
        finished: set[str] = set()
        batches = 0
        deadline = time.monotonic() + 15
        while len(finished) < 8 and time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.2)
            if not msg:
                continue
            batches += 1
            for event in decode_events(msg["data"]).events:
                if isinstance(event, Token):
                    tokens.setdefault(event.req_id, []).append(event.seq)
                elif isinstance(event, Finish):
                    finished.add(event.req_id)
        assert len(finished) == 8
        assert all(seqs == list(range(20)) for seqs in tokens.values()) and len(tokens) == 8
        # One publish per step for the gateway, not one per token: 160 tokens in far fewer messages.
        assert batches < 80
    finally:
        worker.request_stop()
        thread.join(10)
        pubsub.close()
        client.close()
    assert not thread.is_alive()
