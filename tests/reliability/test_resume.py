"""A request outlives its gateway: kill -9 the gateway half the streams are on, mid-stream, and each
of those clients reconnects to the other gateway with its Last-Event-ID. Two gateways, two
workers of the real default model, a real Redis; greedy, so every text must equal the no-fault
run's, and the workers' own counter says each request was generated once.

The issue's 50 streams, of 24 tokens (GENFLEET_RESUME_STREAMS sets another count): about a
minute on two loaded CPU cores, most of it starting the fleet and the no-fault run;
tests/reliability/test_resume_synthetic.py runs the other cases on synthetic workers.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from genfleet.embedded_redis import free_port
from tests.integration.fleet import FleetProcesses, start_gateway, start_worker, wait_healthy
from tests.reliability.harness import ResumedStream, resumed_stream, wait_workers_idle, worker_counter

STREAMS = int(os.environ.get("GENFLEET_RESUME_STREAMS", 50))
MAX_NEW = 24
ADMITTED = "genfleet_worker_admitted_requests_total"


@pytest.fixture(scope="module")
def fleet(redis_server) -> Iterator[tuple[FleetProcesses, str, list[int]]]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    ports = [free_port(), free_port()]
    prefix = f"rr{uuid.uuid4().hex[:6]}"
    processes = FleetProcesses(redis_server.url, prefix)
    # Two workers, each with its own metrics listener (the generation counter) and one CPU thread
    # (as `genfleet serve` gives two workers on two cores: more oversubscribe them), each taking
    # half the streams at most. Without that bound the first to read takes nearly all (47 of
    # 50): the other serves its few alone while the first prefills, and they can end before the
    # kill, which must find every stream of the killed gateway mid-way.
    batch = ("--max-batch-size", str(-(-STREAMS // 2)))
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        for i, port in enumerate(ports):
            processes.workers.append(start_worker(redis_server.url, prefix, f"{prefix}-w{i}", "--metrics-port", str(port),
                                                  *batch))
    finally:
        if threads is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = threads
    processes.gateways.append(start_gateway(redis_server.url, prefix, processes.port, f"{prefix}-g0"))
    other = free_port()
    processes.gateways.append(start_gateway(redis_server.url, prefix, other, f"{prefix}-g1"))
    try:
        wait_healthy(processes.base_url, processes.workers + processes.gateways, timeout=240)
        wait_healthy(f"http://127.0.0.1:{other}", processes.gateways, timeout=60)
        wait_workers_idle(redis_server.url, prefix, expect=2, timeout=60)
        print(f"[gateway kill -9] fleet up in {time.monotonic() - started:.1f} s")
        yield processes, f"http://127.0.0.1:{other}", ports
    finally:
        processes.stop()


def _prompts() -> list[str]:
    # Prompts whose greedy answer runs past MAX_NEW tokens, so that streams are cut mid-way.
    return [f"List the numbers from {10 * i} to {10 * i + 60}, separated by commas: {10 * i}," for i in range(STREAMS)]


async def _streams(runs: list[tuple[list[str], ResumedStream]], on_half_seen=None) -> None:  # type: ignore[no-untyped-def]
    limits = httpx.Limits(max_connections=STREAMS + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks = [asyncio.ensure_future(resumed_stream(client, bases, res, MAX_NEW)) for bases, res in runs]
        if on_half_seen is not None:
            await on_half_seen()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=180)


def test_kill_9_of_a_gateway_mid_stream_loses_nothing(fleet) -> None:  # type: ignore[no-untyped-def]
    processes, other, metric_ports = fleet
    first = processes.base_url
    reference = [ResumedStream(p, f"ref-{uuid.uuid4().hex[:8]}-{i}") for i, p in enumerate(_prompts())]
    started = time.monotonic()
    asyncio.run(_streams([([other], res) for res in reference]))
    no_fault_s = time.monotonic() - started
    assert all(r.generated_text is not None and r.error is None for r in reference), [r.error for r in reference]
    before = worker_counter(metric_ports, ADMITTED)

    victims = [ResumedStream(p, f"kill-{uuid.uuid4().hex[:8]}-{i}") for i, p in enumerate(_prompts())]
    runs = [([first, other] if i % 2 == 0 else [other], res) for i, res in enumerate(victims)]
    on_first = [res for i, res in enumerate(victims) if i % 2 == 0]
    gateway = processes.gateways[0]

    async def kill_when_mid_stream() -> None:
        await asyncio.wait_for(asyncio.gather(*(r.tokens_seen.wait() for r in on_first)), timeout=120)
        gateway.kill()  # SIGKILL: no drain, no cancel

    started = time.monotonic()
    asyncio.run(_streams(runs, kill_when_mid_stream))
    fault_s = time.monotonic() - started
    assert gateway.wait(10) is not None
    for ref, res in zip(reference, victims):
        assert res.error is None, (res.request_id, res.error, res.reconnects)
        assert res.seqs == list(range(len(res.seqs))), res.seqs  # no duplicate, no gap
        assert res.generated_text == ref.generated_text and res.text == ref.text
    resumed = [r for r in on_first if r.reconnects]
    print(f"[gateway kill -9] {len(resumed)} of {len(on_first)} streams of the killed gateway reconnected with "
          f"Last-Event-ID to the other; {len(victims)} texts equal the no-fault run; {STREAMS} streams took "
          f"{no_fault_s:.1f} s without the fault, {fault_s:.1f} s with it")
    # Every stream of the killed gateway was cut mid-way (none had finished at the kill).
    assert len(resumed) == len(on_first)
    wait_workers_idle(processes.redis_url, processes.prefix, expect=2, timeout=30)
    generated = worker_counter(metric_ports, ADMITTED) - before
    assert generated == STREAMS, f"{generated} generations for {STREAMS} requests"
