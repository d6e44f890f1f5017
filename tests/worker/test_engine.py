"""LLMEngine's API with a fake runner: validation, finish reasons, aborts, stats, admission bound."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from tests.fakes import FakeRunner, solo_run
from worker.batch import RequestOutput
from worker.engine import LLMEngine
from worker.request import Request


def _engine(num_blocks: int = 32, block_size: int = 4, budget: int = 32, max_batch: int = 8,
            eos: int = 0, max_model_len: int = 4096, overlap: bool = False,
            clock: Callable[[], float] = time.time) -> tuple[LLMEngine, FakeRunner]:
    config = WorkerConfig(block_size=block_size, max_batch_prefill_tokens=budget, max_batch_size=max_batch,
                          waiting_served_ratio=0.0)
    runner = FakeRunner(block_size, budget, can_overlap=overlap)
    engine = LLMEngine(config, runner, num_blocks=num_blocks, eos_token_ids=frozenset({eos}),
                       max_model_len=max_model_len, clock=clock)
    return engine, runner


def _req(rid: str, prompt: list[int], max_new: int, **kw: object) -> Request:
    params = SamplingParams(max_new_tokens=max_new, ignore_eos=bool(kw.pop("ignore_eos", False)))
    return Request(rid, prompt, params, seed=0, arrival_time=time.time(), **kw)  # type: ignore[arg-type]


def _drain(engine: LLMEngine) -> list[RequestOutput]:
    outs: list[RequestOutput] = []
    for _ in range(1000):
        if not engine.has_unfinished_requests():
            return outs
        outs.extend(engine.step())
    raise AssertionError("engine made no progress")


def test_add_request_refuses_what_can_never_run() -> None:
    engine, _ = _engine(num_blocks=8, block_size=4, max_model_len=64)  # 32 KV tokens
    with pytest.raises(ValueError, match="empty"):
        engine.add_request(_req("e", [], 4))
    with pytest.raises(ValueError, match="<= 64"):
        engine.add_request(_req("long", list(range(1, 60)), 10))
    with pytest.raises(ValueError, match="holds 32"):
        engine.add_request(_req("big", list(range(1, 30)), 10))
    assert engine.stats().capacity_tokens == 32
    engine.add_request(_req("fits", list(range(1, 23)), 10))  # exactly the whole cache
    with pytest.raises(ValueError, match="already"):
        engine.add_request(_req("fits", [1], 1))
    outs = _drain(engine)
    assert [t for o in outs for t in o.new_token_ids] == solo_run(list(range(1, 23)), 10)


@pytest.mark.parametrize("overlap", [False, True])
def test_eos_finishes_unless_ignored(overlap: bool) -> None:
    prompt = [5, 6, 7]
    third = solo_run(prompt, 3)[2]
    engine, _ = _engine(eos=third, overlap=overlap)
    engine.add_request(_req("stop", prompt, 10))
    engine.add_request(_req("go", prompt, 10, ignore_eos=True))
    outs = _drain(engine)
    tokens = {rid: [t for o in outs if o.key == rid for t in o.new_token_ids] for rid in ("stop", "go")}
    reasons = {o.key: o.finish_reason for o in outs if o.finish_reason}
    assert tokens["stop"] == solo_run(prompt, 3) and reasons["stop"] == "eos_token"
    assert tokens["go"] == solo_run(prompt, 10) and reasons["go"] == "length"


def test_outputs_report_prompt_and_cached_tokens_and_release_to_the_runner() -> None:
    engine, runner = _engine(num_blocks=32, block_size=4)
    prompt = list(range(1, 14))  # 13 tokens: three full blocks cached after the first run
    engine.add_request(_req("a", prompt, 2))
    first = _drain(engine)
    assert all(o.num_prompt_tokens == 13 and o.num_cached_tokens == 0 for o in first)
    assert first[0].first_scheduled_at > 0
    engine.add_request(_req("b", prompt, 2))
    second = _drain(engine)
    assert {o.num_cached_tokens for o in second} == {12}
    assert [t for o in second for t in o.new_token_ids] == solo_run(prompt, 2)
    assert "a" in runner.batches[len(runner.batches) - 2].released_keys  # b's first step
    stats = engine.stats()
    assert (stats.prefix_query_tokens, stats.prefix_hit_tokens) == (26, 12)
    assert stats.num_running == stats.num_waiting == 0 and stats.num_free_tokens == stats.capacity_tokens


def test_abort_of_a_waiting_or_unknown_request() -> None:
    engine, runner = _engine(max_batch=1)
    engine.add_request(_req("run", [1, 2, 3], 5))
    engine.add_request(_req("wait", [4, 5, 6], 5))
    engine.step()
    engine.abort_request("wait")
    engine.abort_request("nobody")
    outs = _drain(engine)
    assert {o.key for o in outs} == {"run"}
    assert all(r.key != "wait" for b in runner.batches for r in b.requests)
    assert engine.blocks.num_free_blocks == 32


def test_running_request_times_out_mid_generation() -> None:
    now = [1000.0]
    engine, _ = _engine(clock=lambda: now[0])
    engine.add_request(_req("slow", [1, 2, 3], 100, deadline=now[0] + 0.2))
    outs = engine.step() + engine.step()
    assert len(outs) == 2 and all(o.finish_reason is None for o in outs)
    now[0] += 0.25
    outs = engine.step()
    assert [(o.key, o.new_token_ids, o.finish_reason, o.expired) for o in outs] == [("slow", [], None, True)]
    assert not engine.has_unfinished_requests() and engine.blocks.num_free_blocks == 32


def test_max_batch_size_bounds_the_running_batch() -> None:
    engine, runner = _engine(num_blocks=64, max_batch=3)
    for i in range(7):
        engine.add_request(_req(f"r{i}", [i + 1] * 5, 4))
    outs = _drain(engine)
    assert max(len(b.requests) for b in runner.batches) == 3
    for i in range(7):
        assert [t for o in outs if o.key == f"r{i}" for t in o.new_token_ids] == solo_run([i + 1] * 5, 4)


def test_num_admittable_takes_only_what_can_start_now() -> None:
    roomy, _ = _engine(num_blocks=40, block_size=4, budget=1000, max_batch=4)  # 160 KV tokens
    assert roomy.num_admittable() == 4  # empty: bounded by batch slots
    roomy.add_request(_req("a", list(range(1, 11)), 4))
    assert roomy.num_admittable() == 3
    # Waiting requests that fill the KV cache: take nothing more.
    full, _ = _engine(num_blocks=40, block_size=4, budget=1000, max_batch=64)
    full.add_request(_req("w1", list(range(1, 101)), 4))
    full.add_request(_req("w2", list(range(1, 61)), 4))
    assert full.num_admittable() == 0
    # Waiting prompts longer than two steps' prefill budget: take nothing until they start.
    busy, _ = _engine(num_blocks=40, block_size=4, budget=32, max_batch=64)
    busy.add_request(_req("long", list(range(1, 71)), 4))
    assert busy.num_admittable() == 0
    busy.step()
    assert busy.num_admittable() > 0
    # Otherwise about two steps' budget worth of mean-sized prompts.
    small, _ = _engine(num_blocks=40, block_size=4, budget=64, max_batch=64)
    small.add_request(_req("w", list(range(1, 9)), 4))
    assert 1 <= small.num_admittable() <= (2 * 64 - 8) // 4


def test_overlapped_steps_launch_ahead_and_drop_the_rows_of_finished_requests() -> None:
    prompt = [5, 6, 7]
    third = solo_run(prompt, 3)[2]
    engine, runner = _engine(eos=third, overlap=True)
    engine.add_request(_req("eos", prompt, 10))  # ends at its 3rd token, by EOS
    engine.add_request(_req("len", [8, 9], 4, ignore_eos=True))  # ends at its 4th token, by length
    outs = _drain(engine)
    got = {rid: [t for o in outs if o.key == rid for t in o.new_token_ids] for rid in ("eos", "len")}
    assert got == {"eos": solo_run(prompt, 3), "len": solo_run([8, 9], 4)}
    steps = [[r.key for r in b.requests] for b in runner.batches]
    # The step after the EOS was already running when the EOS arrived: one wasted row, dropped.
    assert sum("eos" in s for s in steps) == 4
    # A length finish is known ahead: no step is launched past it.
    assert sum("len" in s for s in steps) == 4
    assert engine.blocks.num_free_blocks == 32 and not engine.has_unfinished_requests()
