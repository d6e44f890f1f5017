"""load/step_timeline.py: the engine over a timed runner, overlapped and not, every step and request counted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from load.mixed_step_probe import mixed_step_probe
from load.step_timeline import KernelCompiles, Timeline, TimedRunner
from tests.fakes import FakeRunner
from worker.engine import LLMEngine
from worker.request import Request, RequestKey


@pytest.mark.parametrize("overlap", [False, True])
def test_every_request_and_step_is_counted(overlap: bool, tmp_path: Path) -> None:
    config = WorkerConfig(block_size=4, max_batch_prefill_tokens=32, max_batch_size=8, waiting_served_ratio=0.0)
    timed = TimedRunner(FakeRunner(4, 32, can_overlap=overlap))
    engine = LLMEngine(config, timed, num_blocks=64, eos_token_ids=frozenset({0}), max_model_len=4096)
    timeline = Timeline(timed)
    for i in range(3):
        params = SamplingParams(max_new_tokens=5 + i, ignore_eos=True)
        engine.add_request(Request(RequestKey(f"r{i}", 0), [5, 6, 7, 8 + i], params, seed=0, arrival_time=time.time()))
    timeline.step(None, [])  # a step that ran nothing counts too
    while engine.has_unfinished_requests():
        outs = engine.step()
        timeline.step(engine.last_batch, outs)
    assert sorted(timeline.tokens.values()) == [5, 6, 7]
    assert all(0 <= timeline.first[k] <= timeline.last[k] for k in timeline.first)
    assert timed.wait_s >= 0 and timed.launch_s > 0 and timed.mask_s == 0.0  # the fake fills no masks
    assert all(s.wall_ms >= 0 for s in timeline.steps)
    assert sum(s.tokens for s in timeline.steps) >= 3 * 4 + 5 + 6 + 7 - 3
    line = timeline.summary()
    assert "tokens per request min/p50/max 5/6/7 (18 in all), 0 ended by an error" in line, line
    assert "TTFT min/p50/p90/max" in line and "slowest: " in line
    timeline.dump(tmp_path / "run.json", row="test")
    body = json.loads((tmp_path / "run.json").read_text())
    assert body["row"] == "test" and len(body["steps"]) == len(timeline.steps) and len(body["requests"]) == 3


def test_kernel_compiles_are_noted_in_their_step_and_tritons_hooks_restored() -> None:
    triton = pytest.importorskip("triton")
    runtime = triton.knobs.runtime
    before = (runtime.jit_cache_hook, runtime.jit_post_compile_hook)
    with KernelCompiles() as kernels:
        timeline = Timeline(TimedRunner(FakeRunner(4, 32)), kernels)
        timeline.step(None, [])
        # As Triton calls them around a compile (no GPU here to compile on).
        assert runtime.jit_cache_hook(key=1, repr="_kernel[num_warps=4](x: *fp32)") is None
        runtime.jit_post_compile_hook(key=1, repr="_kernel[num_warps=4](x: *fp32)")
        timeline.step(None, [])
    assert (runtime.jit_cache_hook, runtime.jit_post_compile_hook) == before
    assert [name for name, _, _ in kernels.done] == ["_kernel"]
    assert timeline.steps[0].compiles == [] and [n for n, _ in timeline.steps[1].compiles] == ["_kernel"]
    assert "1 kernel compiles" in timeline.summary()


def test_the_mixed_step_probe_runs_a_decode_beside_an_arriving_prompt_twice() -> None:
    runner = FakeRunner(16, 512, can_overlap=True)
    runner.num_blocks, runner.eos_token_ids, runner.max_model_len = 64, frozenset({0}), 4096  # type: ignore[attr-defined]
    lines = mixed_step_probe(runner, WorkerConfig(max_batch_prefill_tokens=512), 1000)
    assert [line.split(":")[0] for line in lines] == ["mixed-step probe, first", "mixed-step probe, again"]
    assert all("(1 mixed)" in line and "0 kernels compiled" in line for line in lines), lines
