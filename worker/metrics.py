"""The worker's own Prometheus metrics, on a port of its own (`--metrics-port`).

The gateway's /metrics speaks for the fleet (requests, latency, queue, live workers); this
registry speaks for one engine: how long steps take, how full the batch and the KV pool are, how
often the prefix cache hits, how many tokens it makes. Prometheus finds every worker by DNS
(deploy/prometheus.yml), so scaled workers need no configuration.

The engine loop calls `observe_step` once per step with the engine's stats; counters the engine
keeps as running totals (preemptions, prefix tokens) are turned into increments here. TGI's own
per-batch series are here too, under its names and buckets, so its Grafana panels work:
`tgi_batch_inference_count` / `_success`, `tgi_batch_inference_duration` and
`tgi_batch_forward_duration` (one engine step: its forward, sampling and update), labelled
`method="prefill"` for a step that computed prompt tokens and `"decode"` otherwise;
`tgi_batch_next_size` (requests computing prompt tokens in a step) and
`tgi_batch_current_max_tokens` (KV tokens the running batch holds). With --speculate, the draft
tokens verified and accepted, in all and per draft position (acceptance at position j is
accepted{position=j} / drafted{position=j}). Under `genfleet serve` the
gateway's /metrics carries these too (gateway/worker_metrics.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server

from common.tgi_metrics import DURATION_BUCKETS, BareCounters
from worker.batch import EngineStats

__all__ = ["WorkerMetrics", "start_metrics_server", "MetricsServer"]

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_NEXT_BATCH_BUCKETS = tuple(range(1, 1025))  # TGI's tgi_batch_next_size buckets: 1..1024


class WorkerMetrics:
    """One worker's metrics in a registry of its own (several workers may share a test process).

    Args:
        worker_id, model, device: published once as labels of `genfleet_worker_info`.
        registry: where the metrics live; a fresh one by default.
        clock: monotonic seconds, for the tokens/s window.
    """

    def __init__(self, worker_id: str, model: str, device: str, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        disable_created_metrics()  # no `*_created` series: nobody graphs them
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.info = Gauge("genfleet_worker_info", "Constant 1, labelled with what this worker serves",
                          ["worker_id", "model", "device"], registry=r)
        self.info.labels(worker_id, model, device).set(1)
        self.step_seconds = Histogram("genfleet_worker_step_duration_seconds", "Wall time of one engine step",
                                      buckets=_STEP_BUCKETS, registry=r)
        self.batch_size = Histogram("genfleet_worker_batch_size", "Requests that produced output in a step",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.batch_current = Gauge("genfleet_worker_batch_current_size", "Requests in the running batch", registry=r)
        self.waiting = Gauge("genfleet_worker_queue_size", "Requests accepted but not yet scheduled", registry=r)
        self.kv_capacity = Gauge("genfleet_worker_kv_capacity_tokens", "KV cache capacity in tokens", registry=r)
        self.kv_free = Gauge("genfleet_worker_kv_free_tokens", "KV cache tokens not in use", registry=r)
        self.kv_usage = Gauge("genfleet_worker_kv_usage_ratio", "Share of the KV cache in use (0..1)", registry=r)
        self.steps = Counter("genfleet_worker_steps", "Engine steps run", registry=r)
        self.tokens = Counter("genfleet_worker_generated_tokens", "Tokens generated", registry=r)
        self.admitted = Counter("genfleet_worker_admitted_requests",
                                "Request attempts admitted into the engine (a continuation counts again)", registry=r)
        self.tokens_per_s = Gauge("genfleet_worker_tokens_per_second",
                                  "Tokens generated per second over the last few seconds", registry=r)
        self.preemptions = Counter("genfleet_worker_preemptions", "Requests preempted for lack of KV blocks",
                                   registry=r)
        self.prefix_query = Counter("genfleet_worker_prefix_query_tokens", "Prompt tokens looked up in the prefix cache",
                                    registry=r)
        self.prefix_hit = Counter("genfleet_worker_prefix_hit_tokens", "Prompt tokens found in the prefix cache",
                                  registry=r)
        self.draft_tokens = Counter("genfleet_worker_draft_tokens", "Speculative draft tokens verified", registry=r)
        self.accepted_draft_tokens = Counter("genfleet_worker_accepted_draft_tokens",
                                             "Speculative draft tokens accepted", registry=r)
        self.drafted_at = Counter("genfleet_worker_draft_tokens_by_position",
                                  "Verified steps that drafted a token at this position (0-based)", ["position"],
                                  registry=r)
        self.accepted_at = Counter("genfleet_worker_accepted_draft_tokens_by_position",
                                   "Verified steps that accepted their draft at this position (0-based)", ["position"],
                                   registry=r)
        self.tgi_counters = BareCounters()
        self.tgi_counters.declare("tgi_batch_inference_count", "Engine steps, by method")
        self.tgi_counters.declare("tgi_batch_inference_success", "Engine steps that completed, by method")
        r.register(self.tgi_counters)
        self.forward_seconds = Histogram("tgi_batch_forward_duration", "Engine step duration (s), by method",
                                         ["method"], buckets=DURATION_BUCKETS, registry=r)
        self.inference_seconds = Histogram("tgi_batch_inference_duration", "Engine step duration (s), by method",
                                           ["method"], buckets=DURATION_BUCKETS, registry=r)
        self.next_size = Histogram("tgi_batch_next_size", "Requests computing prompt tokens in a step",
                                   buckets=_NEXT_BATCH_BUCKETS, registry=r)
        self.current_max_tokens = Gauge("tgi_batch_current_max_tokens", "KV tokens the running batch holds",
                                        registry=r)
        self._totals: dict[str, int] = {}
        self._clock = clock
        self._window_start = clock()
        self._window_tokens = 0

    def observe_step(self, stats: EngineStats, step_seconds: float, num_tokens: int,
                     batch_size: int | None = None, method: str = "decode", num_new: int = 0) -> None:
        """Record one engine step.

        Args:
            stats: the engine's stats after the step.
            step_seconds: wall time of the step.
            num_tokens: tokens generated by the step (sum of len(new_token_ids)).
            batch_size: requests computed in the step; defaults to the engine's last_batch_size.
            method: "prefill" when the step computed prompt tokens, else "decode" (TGI's label).
            num_new: requests that computed prompt tokens in the step (tgi_batch_next_size; 0 records nothing).
        """
        self.step_seconds.observe(step_seconds)
        self.forward_seconds.labels(method).observe(step_seconds)
        self.inference_seconds.labels(method).observe(step_seconds)
        if num_new > 0:
            self.next_size.observe(num_new)
        self.tgi_counters.inc("tgi_batch_inference_count", method=method)
        self.tgi_counters.inc("tgi_batch_inference_success", method=method)
        self.steps.inc()
        self.batch_size.observe(stats.last_batch_size if batch_size is None else batch_size)
        self.tokens.inc(num_tokens)
        self._gauges(stats)
        self._advance("num_preemptions", stats.num_preemptions, self.preemptions)
        self._advance("prefix_query_tokens", stats.prefix_query_tokens, self.prefix_query)
        self._advance("prefix_hit_tokens", stats.prefix_hit_tokens, self.prefix_hit)
        if stats.speculate:
            self._advance("draft_tokens", stats.draft_tokens, self.draft_tokens)
            self._advance("accepted_draft_tokens", stats.accepted_draft_tokens, self.accepted_draft_tokens)
            for j, (drafted, accepted) in enumerate(zip(stats.drafted_by_position, stats.accepted_by_position, strict=True)):
                self._advance(f"drafted@{j}", drafted, self.drafted_at.labels(str(j)))
                self._advance(f"accepted@{j}", accepted, self.accepted_at.labels(str(j)))
        self._window_tokens += num_tokens
        self._roll_window(self._clock())

    def observe_idle(self, stats: EngineStats) -> None:
        """Between steps (nothing running): keep the gauges true and let tokens/s fall to zero."""
        self._gauges(stats)
        self._roll_window(self._clock())

    def _gauges(self, stats: EngineStats) -> None:
        self.batch_current.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.kv_capacity.set(stats.capacity_tokens)
        self.kv_free.set(stats.num_free_tokens)
        self.current_max_tokens.set(stats.capacity_tokens - stats.num_free_tokens)
        if stats.capacity_tokens > 0:
            self.kv_usage.set(1.0 - stats.num_free_tokens / stats.capacity_tokens)

    def _roll_window(self, now: float) -> None:
        elapsed = now - self._window_start
        if elapsed >= 2.0:
            self.tokens_per_s.set(self._window_tokens / elapsed)
            self._window_start, self._window_tokens = now, 0

    def _advance(self, name: str, total: int, counter: Counter) -> None:
        previous = self._totals.get(name, 0)
        if total > previous:
            counter.inc(total - previous)
        self._totals[name] = int(total)


class MetricsServer:
    """A running /metrics listener; `close()` stops it and frees the port."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_metrics_server(port: int, metrics: WorkerMetrics, addr: str = "0.0.0.0") -> MetricsServer:
    """Serve `metrics` at http://addr:port/metrics on a daemon thread. Port 0 picks a free port."""
    server, thread = start_http_server(port, addr=addr, registry=metrics.registry)
    return MetricsServer(server, thread)
