"""Scheduler and engine behaviour with a fake runner: budgets, chunking, preemption, prefix cache."""

from __future__ import annotations

import time
from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from tests.fakes import FakeRunner, fake_logprob, solo_run
from tests.worker.invariants import check_block_invariants
from worker.engine import LLMEngine
from worker.request import Request


def _engine(num_blocks: int = 64, block_size: int = 4, budget: int = 32, max_batch: int = 8,
            prefix: bool = True, ratio: float = 0.0, overlap: bool = False,
            max_priority_wait: float = 30.0) -> tuple[LLMEngine, FakeRunner]:
    config = WorkerConfig(
        block_size=block_size, max_batch_prefill_tokens=budget, max_batch_size=max_batch,
        prefix_caching=prefix, waiting_served_ratio=ratio, max_priority_wait=max_priority_wait,
    )
    runner = FakeRunner(block_size, budget, can_overlap=overlap)
    engine = LLMEngine(config, runner, num_blocks=num_blocks, eos_token_ids=frozenset({0}), max_model_len=4096)
    return engine, runner


def _req(rid: str, prompt: list[int], max_new: int, **kw: object) -> Request:
    kw.setdefault("arrival_time", time.time())
    return Request(rid, prompt, SamplingParams(max_new_tokens=max_new), seed=0, **kw)  # type: ignore[arg-type]


def _drain(engine: LLMEngine, out: dict[str, list[int]], limit: int = 10_000) -> dict[str, str]:
    reasons = {}
    for _ in range(limit):
        if not engine.has_unfinished_requests():
            break
        for o in engine.step():
            out.setdefault(o.key, []).extend(o.new_token_ids)
            if o.finish_reason:
                reasons[o.key] = o.finish_reason
        check_block_invariants(engine.blocks)
    assert not engine.has_unfinished_requests()
    return reasons


def test_long_prompt_is_prefilled_in_chunks_beside_decodes() -> None:
    engine, runner = _engine(budget=16)
    engine.add_request(_req("short", [1, 2, 3], 20))
    engine.step()  # short prefilled, first token sampled
    engine.add_request(_req("long", list(range(5, 55)), 3))
    out: dict[str, list[int]] = {}
    _drain(engine, out)
    mixed = [b for b in runner.batches if b.num_decode == 1 and len(b.requests) == 2]
    assert mixed, "decodes must share steps with prefill chunks"
    long_chunks = [len(r.token_ids) for b in runner.batches for r in b.requests if r.key == "long"]
    assert long_chunks[0] == 15 and sum(long_chunks[:4]) == 50  # 16-token budget minus the decode
    assert out["long"] == solo_run(list(range(5, 55)), 3)


def test_preemption_then_resume_gives_identical_tokens() -> None:
    # 12 blocks of 4 tokens: three requests growing to 24 tokens each cannot all stay resident.
    engine, runner = _engine(num_blocks=12, block_size=4, budget=64)
    prompts = {f"r{i}": [10 * i + j for j in range(1, 9)] for i in range(3)}
    for rid, prompt in prompts.items():
        engine.add_request(_req(rid, prompt, 16))
    out: dict[str, list[int]] = {}
    reasons = _drain(engine, out)
    assert engine.scheduler.num_preemptions > 0
    for rid, prompt in prompts.items():
        assert out[rid] == solo_run(prompt, 16), rid
        assert reasons[rid] == "length"
    assert engine.blocks.num_free_blocks == 12


def test_abort_frees_blocks_at_the_next_step() -> None:
    engine, _ = _engine()
    engine.add_request(_req("a", [1, 2, 3, 4, 5], 100))
    engine.step()
    assert engine.blocks.num_free_blocks < 64
    engine.abort_request("a")
    engine.step()
    assert engine.blocks.num_free_blocks == 64 and not engine.has_unfinished_requests()


def test_expired_deadline_ends_with_timeout() -> None:
    engine, _ = _engine()
    engine.add_request(_req("late", [1, 2, 3], 10, deadline=time.time() - 1))
    outs = engine.step()
    assert [(o.key, o.finish_reason, o.expired) for o in outs] == [("late", None, True)]
    assert engine.blocks.num_free_blocks == 64


def test_priority_orders_waiting_requests() -> None:
    engine, runner = _engine(budget=4, max_batch=1)
    engine.add_request(_req("low", [1, 2, 3], 1, priority=0))
    engine.add_request(_req("high", [4, 5, 6], 1, priority=5))
    engine.step()
    assert runner.batches[0].requests[0].key == "high"


def test_preemption_takes_the_lowest_priority_first_and_spares_the_highest() -> None:
    # 12 blocks of 4 tokens, three requests growing to 24 tokens (6 blocks) each: one must yield.
    engine, _ = _engine(num_blocks=12, block_size=4, budget=64)
    prompts = {"old-low": [1] * 8, "mid": [2] * 8, "high": [3] * 8}
    reqs = {rid: _req(rid, prompt, 16, priority=p) for (rid, prompt), p in zip(prompts.items(), (-1, 0, 1))}
    for req in reqs.values():
        engine.add_request(req)
    victims: list[str] = []
    out: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        before = {rid: r.num_preemptions for rid, r in reqs.items()}
        for o in engine.step():
            out.setdefault(o.key, []).extend(o.new_token_ids)
        victims += [rid for rid, r in reqs.items() if r.num_preemptions > before[rid]]
    # The oldest request is the lowest priority: it yields, though the newest would otherwise.
    assert victims and victims[0] == "old-low" and "high" not in victims, victims
    assert all(out[rid] == solo_run(prompt, 16) for rid, prompt in prompts.items())


def test_a_request_passed_over_past_the_bound_goes_first() -> None:
    for bound, first in ((5.0, "starved"), (0.0, "high")):
        engine, runner = _engine(budget=4, max_batch=1, max_priority_wait=bound)
        engine.add_request(_req("high", [4, 5, 6], 1, priority=2))
        engine.add_request(_req("starved", [1, 2, 3], 1, priority=-2, arrival_time=time.time() - 10))
        engine.step()
        assert runner.batches[0].requests[0].key == first, bound


def test_shared_prefix_computes_only_the_suffix() -> None:
    engine, runner = _engine(num_blocks=400, block_size=16, budget=2048)
    prefix = [7 + (i % 500) for i in range(512)]
    a, b = prefix + [1, 2, 3], prefix + [4, 5, 6, 8]
    engine.add_request(_req("a", a, 4))
    out: dict[str, list[int]] = {}
    _drain(engine, out)
    engine.add_request(_req("b", b, 4))
    first = len(runner.batches)
    _drain(engine, out)
    computed = sum(len(r.token_ids) for batch in runner.batches[first:] for r in batch.requests if r.key == "b")
    assert computed == len(b) - 512 + 3  # the suffix, then three decode steps
    assert out["b"] == solo_run(b, 4)
    stats = engine.stats()
    assert stats.prefix_hit_tokens == 512


def test_prefix_cache_off_recomputes_everything() -> None:
    engine, runner = _engine(num_blocks=400, block_size=16, budget=2048, prefix=False)
    prefix = list(range(1, 129))
    engine.add_request(_req("a", prefix + [1], 1))
    _drain(engine, {})
    engine.add_request(_req("b", prefix + [2], 1))
    first = len(runner.batches)
    _drain(engine, {})
    assert sum(len(r.token_ids) for bt in runner.batches[first:] for r in bt.requests) == 129


def test_waiting_served_ratio_holds_back_admission() -> None:
    engine, runner = _engine(budget=64, ratio=2.0)
    engine.add_request(_req("a", [1, 2, 3], 50))
    engine.step()
    engine.add_request(_req("b", [4, 5, 6], 5))
    engine.step()
    assert [r.key for r in runner.batches[-1].requests] == ["a"]  # 1 waiting < 2.0 x 1 running
    for _ in range(WorkerConfig().max_waiting_tokens):
        engine.step()
    assert "b" in {r.key for bt in runner.batches for r in bt.requests}


def test_waiting_prompts_that_fill_the_step_are_admitted_despite_the_ratio() -> None:
    # A worker holds only about two steps' worth of waiting prompts, never ratio x running of
    # them: a full step's worth must be enough, or the ratio would stall admission.
    engine, runner = _engine(num_blocks=256, budget=64, max_batch=64, ratio=2.0)
    engine.add_request(_req("a", [1, 2, 3], 50))
    engine.step()
    engine.add_request(_req("short", [4, 5, 6], 5))
    engine.step()
    assert [r.key for r in runner.batches[-1].requests] == ["a"]  # 3 tokens waiting: held back
    engine.add_request(_req("long", list(range(10, 80)), 5))  # 73 waiting tokens >= 64 - 1
    engine.step()
    assert {r.key for r in runner.batches[-1].requests} == {"a", "short", "long"}


@dataclass(frozen=True)
class _Arrival:
    step: int
    prompt: list[int]
    max_new: int
    priority: int
    abort_at: int | None  # engine step at which the client goes away
    prompt_logprobs: bool


@st.composite
def _schedules(draw: st.DrawFn) -> list[_Arrival]:
    items: list[_Arrival] = []
    for i in range(draw(st.integers(1, 10))):
        arrival = draw(st.integers(0, 12))
        prompt = [1 + (i * 37 + j * 11) % 900 for j in range(draw(st.integers(1, 40)))]
        if draw(st.booleans()) and items:  # share a prefix with an earlier request
            prompt = items[0].prompt[: draw(st.integers(1, len(items[0].prompt)))] + prompt
        abort_at = arrival + draw(st.integers(0, 30)) if draw(st.integers(0, 4)) == 0 else None
        items.append(_Arrival(arrival, prompt, draw(st.integers(1, 24)), draw(st.integers(0, 2)), abort_at,
                              draw(st.integers(0, 3)) == 0))
    return items


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=_schedules(),
    num_blocks=st.integers(26, 48),  # 26 blocks of 4 hold the longest request (104 tokens)
    budget=st.integers(8, 48),
    max_batch=st.integers(1, 8),
    ratio=st.sampled_from([0.0, 0.3, 2.0]),
    prefix=st.booleans(),
    overlap=st.booleans(),
)
def test_any_arrival_schedule_reproduces_solo_runs(
    schedule: list[_Arrival], num_blocks: int, budget: int, max_batch: int, ratio: float, prefix: bool,
    overlap: bool,
) -> None:
    """Whatever the arrivals, priorities, aborts and knobs, one step at a time or overlapped:
    every request that is not aborted yields exactly its solo run, an aborted one a prefix of
    it, and every block comes back."""
    engine, runner = _engine(num_blocks=num_blocks, block_size=4, budget=budget, max_batch=max_batch,
                             prefix=prefix, ratio=ratio, overlap=overlap)
    assert engine.overlap == overlap
    pending = sorted(enumerate(schedule), key=lambda item: item[1].step)
    aborts = {a.abort_at: f"r{i}" for i, a in enumerate(schedule) if a.abort_at is not None}
    out: dict[str, list[int]] = {}
    finished: set[str] = set()
    prompt_lps: dict[str, list[float]] = {}
    step = 0
    while pending or engine.has_unfinished_requests():
        while pending and pending[0][1].step <= step:
            i, a = pending.pop(0)
            params = SamplingParams(max_new_tokens=a.max_new, prefill_logprobs=a.prompt_logprobs)
            engine.add_request(Request(f"r{i}", a.prompt, params, 0, time.time(), priority=a.priority))
        if step in aborts:
            engine.abort_request(aborts[step])
        for o in engine.step():
            assert o.key not in finished, "output after the finish"
            out.setdefault(o.key, []).extend(o.new_token_ids)
            if o.prefill_logprobs is not None:
                prompt_lps[o.key] = o.prefill_logprobs
            if o.finish_reason:
                finished.add(o.key)
        check_block_invariants(engine.blocks)
        assert len(engine.scheduler.running) <= max_batch
        step += 1
        assert step < 5000, "no progress"
    for i, a in enumerate(schedule):
        want = solo_run(a.prompt, a.max_new)
        got = out.get(f"r{i}", [])
        if f"r{i}" in aborts.values() and f"r{i}" not in finished:
            assert got == want[: len(got)]
        else:
            assert got == want
        if a.prompt_logprobs and got:  # every prompt position scored once, in order
            assert prompt_lps[f"r{i}"] == [fake_logprob(p) for p in range(len(a.prompt) - 1)]
    assert engine.blocks.num_free_blocks == num_blocks  # no leak
    assert all(b.num_tokens <= budget for b in runner.batches)
    event(f"overlap: {overlap}")
    event(f"preempted: {engine.scheduler.num_preemptions > 0}")
    event(f"prefix hit: {engine.stats().prefix_hit_tokens > 0}")


def test_preempted_requests_resume_despite_the_waiting_ratio() -> None:
    # The ratio and max_waiting_tokens hold new arrivals back; a preempted request was admitted
    # once and must come back as soon as blocks free up, while the batch is still running.
    config = WorkerConfig(block_size=4, max_batch_prefill_tokens=64, waiting_served_ratio=50.0, max_waiting_tokens=1000)
    runner = FakeRunner(4, 64)
    engine = LLMEngine(config, runner, num_blocks=8, eos_token_ids=frozenset({0}), max_model_len=4096)
    spec = {"r0": ([1, 2, 3, 4], 16), "r1": (list(range(5, 13)), 6), "r2": ([9, 10, 11, 12], 12)}
    for rid, (prompt, max_new) in spec.items():
        engine.add_request(_req(rid, prompt, max_new))
    out: dict[str, list[int]] = {}
    _drain(engine, out)
    assert engine.scheduler.num_preemptions > 0
    assert all(out[rid] == solo_run(prompt, max_new) for rid, (prompt, max_new) in spec.items())
    ids = [{r.key for r in b.requests} for b in runner.batches]
    gone = next(i for i, s in enumerate(ids) if "r2" not in s)
    assert any({"r0", "r2"} <= s for s in ids[gone:]), "r2 waited for the whole batch to finish"
