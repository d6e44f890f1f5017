"""/metrics of a gateway with --merge-worker-metrics carries the workers' own series, labelled worker_id."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from genfleet.embedded_redis import free_port
from tests.gateway.harness import ScriptedWorker
from worker.engine import EngineStats
from worker.metrics import WorkerMetrics, start_metrics_server


def _scrape_until(url: str, ready: Callable[[str], bool]) -> str:
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"{url}/metrics", timeout=5).text
        if ready(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_one_endpoint_shows_the_workers_engine_series(make_gateway, worker: ScriptedWorker) -> None:  # type: ignore[no-untyped-def]
    engine = WorkerMetrics(worker.worker_id, worker.model, "cpu")
    engine.observe_step(EngineStats(2, 1, 600, 1000, num_preemptions=0, prefix_query_tokens=64,
                                    prefix_hit_tokens=32, steps=1), 0.02, num_tokens=2, method="prefill", num_new=2)
    engine.observe_step(EngineStats(2, 0, 590, 1000, 0, 64, 32, 2), 0.01, num_tokens=2)
    server = start_metrics_server(0, engine, addr="127.0.0.1")
    try:
        worker.metrics_port = server.port
        worker.heartbeat()
        with make_gateway(merge_worker_metrics=True) as gw:
            text = _scrape_until(gw.url, lambda t: "tgi_batch_next_size" in t)
    finally:
        server.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}  # valid exposition, one family each
    assert [line for line in text.splitlines() if line.startswith("# TYPE tgi_batch_inference_duration ")] != []
    assert sum(line.startswith("# TYPE ") for line in text.splitlines()) == len(families)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    wid = ("worker_id", worker.worker_id)
    assert samples[("tgi_batch_inference_duration_count", (("method", "prefill"), wid))] == 1
    assert samples[("tgi_batch_inference_duration_count", (("method", "decode"), wid))] == 1
    assert samples[("tgi_batch_next_size_count", (wid,))] == 1 and samples[("tgi_batch_next_size_sum", (wid,))] == 2
    assert samples[("tgi_batch_current_max_tokens", (wid,))] == 410
    assert samples[("genfleet_worker_prefix_hit_tokens_total", (wid,))] == 32
    assert samples[("genfleet_worker_step_duration_seconds_count", (wid,))] == 2
    assert samples[("genfleet_worker_kv_usage_ratio", (wid,))] == 1 - 590 / 1000
    assert ("tgi_request_count", ()) in samples  # the gateway's own series stay as they were
    assert "_created" not in text


def test_a_worker_that_does_not_answer_is_left_out(make_gateway, worker: ScriptedWorker) -> None:  # type: ignore[no-untyped-def]
    worker.metrics_port = free_port()  # nothing listens there
    worker.heartbeat()
    with make_gateway(merge_worker_metrics=True) as gw:
        r = httpx.get(f"{gw.url}/metrics", timeout=5)
    assert r.status_code == 200 and "tgi_request_count" in r.text and "tgi_batch_next_size" not in r.text


def test_without_the_merge_only_the_gateways_series(make_gateway, worker: ScriptedWorker) -> None:  # type: ignore[no-untyped-def]
    engine = WorkerMetrics(worker.worker_id, worker.model, "cpu")
    server = start_metrics_server(0, engine, addr="127.0.0.1")
    try:
        worker.metrics_port = server.port
        worker.heartbeat()
        with make_gateway() as gw:  # docker-compose: Prometheus scrapes each worker itself
            text = httpx.get(f"{gw.url}/metrics", timeout=5).text
    finally:
        server.close()
    assert "genfleet_worker_steps" not in text
