"""The worker's Prometheus registry: what one step records, and the listener on its own port."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from worker.metrics import WorkerMetrics, start_metrics_server
from worker.batch import EngineStats


def _samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + ("" if not s.labels else "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}")
            out[key] = s.value
    return out


def test_steps_are_recorded_and_served_on_their_own_port() -> None:
    metrics = WorkerMetrics("w-1", "m", "cpu")
    metrics.observe_step(EngineStats(4, 2, 750, 1000, num_preemptions=1, prefix_query_tokens=100,
                                     prefix_hit_tokens=40, steps=1, last_batch_size=4), 0.012, num_tokens=4)
    metrics.observe_step(EngineStats(3, 0, 800, 1000, num_preemptions=1, prefix_query_tokens=150,
                                     prefix_hit_tokens=90, steps=2, last_batch_size=3), 0.030, num_tokens=3,
                         method="prefill")
    server = start_metrics_server(0, metrics, addr="127.0.0.1")
    try:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    finally:
        server.close()
    s = _samples(text)
    assert s["genfleet_worker_info{device=cpu,model=m,worker_id=w-1}"] == 1
    assert s["genfleet_worker_steps_total"] == 2
    assert s["genfleet_worker_generated_tokens_total"] == 7
    assert s["genfleet_worker_step_duration_seconds_count"] == 2
    assert abs(s["genfleet_worker_step_duration_seconds_sum"] - 0.042) < 1e-9
    assert s["genfleet_worker_batch_size_sum"] == 7
    assert s["genfleet_worker_batch_current_size"] == 3
    assert s["genfleet_worker_queue_size"] == 0
    assert abs(s["genfleet_worker_kv_usage_ratio"] - 0.2) < 1e-9
    assert s["genfleet_worker_kv_capacity_tokens"] == 1000
    # Running totals from the engine become counter increments, never double counted.
    assert s["genfleet_worker_preemptions_total"] == 1
    assert s["genfleet_worker_prefix_query_tokens_total"] == 150
    assert s["genfleet_worker_prefix_hit_tokens_total"] == 90
    # TGI's per-batch series, bare counter names and its duration buckets.
    assert s["tgi_batch_inference_count{method=decode}"] == 1
    assert s["tgi_batch_inference_count{method=prefill}"] == 1
    assert s["tgi_batch_inference_success{method=prefill}"] == 1
    assert s["tgi_batch_forward_duration_count{method=decode}"] == 1
    assert abs(s["tgi_batch_forward_duration_sum{method=prefill}"] - 0.030) < 1e-9
    assert s["tgi_batch_forward_duration_bucket{le=0.00015,method=decode}"] == 0
    assert "tgi_batch_inference_count_total" not in text


def test_two_workers_in_one_process_keep_separate_registries() -> None:
    a, b = WorkerMetrics("a", "m", "cpu"), WorkerMetrics("b", "m", "cpu")
    a.observe_step(EngineStats(1, 0, 10, 10, 0, 0, 0, 1), 0.01, num_tokens=5)
    assert a.registry.get_sample_value("genfleet_worker_generated_tokens_total") == 5
    assert b.registry.get_sample_value("genfleet_worker_generated_tokens_total") == 0


def test_tokens_per_second_over_a_window_and_falls_to_zero_when_idle() -> None:
    now = [0.0]
    m = WorkerMetrics("w", "m", "cpu", clock=lambda: now[0])
    stats = EngineStats(2, 0, 10, 10, 0, 0, 0, 1)
    for _ in range(10):
        now[0] += 0.25
        m.observe_step(stats, 0.25, num_tokens=2)
    # The first window closed at 2.0 s with 8 steps' 16 tokens; 4 tokens wait in the next one.
    assert m.registry.get_sample_value("genfleet_worker_tokens_per_second") == 16 / 2.0
    now[0] = 5.5
    m.observe_idle(EngineStats(0, 0, 10, 10, 0, 0, 0, 10))
    assert m.registry.get_sample_value("genfleet_worker_tokens_per_second") == 4 / 3.5
    now[0] = 8.0
    m.observe_idle(EngineStats(0, 0, 10, 10, 0, 0, 0, 10))
    assert m.registry.get_sample_value("genfleet_worker_tokens_per_second") == 0.0
    assert m.registry.get_sample_value("genfleet_worker_batch_current_size") == 0


def test_speculation_counters_in_all_and_per_position() -> None:
    metrics = WorkerMetrics("w-1", "m", "cpu")
    base = dict(num_running=1, num_waiting=0, num_free_tokens=900, capacity_tokens=1000, num_preemptions=0,
                prefix_query_tokens=0, prefix_hit_tokens=0, speculation="ngram", speculate=2)
    metrics.observe_step(EngineStats(steps=1, draft_tokens=2, accepted_draft_tokens=1, drafted_by_position=(1, 1),
                                     accepted_by_position=(1, 0), **base), 0.01, num_tokens=2)
    metrics.observe_step(EngineStats(steps=2, draft_tokens=5, accepted_draft_tokens=3, drafted_by_position=(3, 2),
                                     accepted_by_position=(2, 1), **base), 0.01, num_tokens=3)
    from prometheus_client import generate_latest

    s = _samples(generate_latest(metrics.registry).decode())
    assert s["genfleet_worker_draft_tokens_total"] == 5 and s["genfleet_worker_accepted_draft_tokens_total"] == 3
    assert s["genfleet_worker_draft_tokens_by_position_total{position=0}"] == 3
    assert s["genfleet_worker_draft_tokens_by_position_total{position=1}"] == 2
    assert s["genfleet_worker_accepted_draft_tokens_by_position_total{position=0}"] == 2
    assert s["genfleet_worker_accepted_draft_tokens_by_position_total{position=1}"] == 1
