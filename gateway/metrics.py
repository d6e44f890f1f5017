"""The gateway's Prometheus metrics, under TGI's exact names.

Counters are exported under their bare names as TGI does (common/tgi_metrics.py); histograms
use TGI's buckets (1.5e-4 x 1.5^k seconds for durations). Fleet gauges come from the workers'
heartbeats. The end-to-end duration is exported twice: as `tgi_request_duration` (TGI's own name)
and as `tgi_request_duration_seconds` (the name TGI's deployment guides graph). No `*_created`
series: nobody graphs them.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from common.errors import GenfleetError
from common.tgi_metrics import DURATION_BUCKETS, BareCounters

if TYPE_CHECKING:
    from common.protocol import Token
    from gateway.run import Outcome

__all__ = ["GatewayMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_DURATION = DURATION_BUCKETS
# tgi_request_failure's `err` label for each error_type (TGI's kinds).
_FAILURE_KIND = {"validation": "validation", "template_error": "template", "overloaded": "overloaded",
                 "bad_request": "validation", "payload_too_large": "validation"}


def _linear(top: int, n: int = 100) -> tuple[float, ...]:
    step = max(1, top // n)
    return tuple(float(x) for x in range(step, top + step, step))


class BurstHistogram(Collector):
    """A histogram for the per-token series, observed on the event loop only: `observe(value, n)`
    records n equal values in one call (a burst of tokens shares its gaps), without the lock and
    the linear bucket walk that prometheus_client's Histogram pays per value."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self._name, self._help = name, help_text
        self._bounds = [*buckets, math.inf]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self._counts[bisect_left(self._bounds, value)] += n  # first bucket with value <= le
        self._sum += value * n

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip(self._bounds, list(self._counts)):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(self._name, self._help, buckets=buckets, sum_value=self._sum)


class _Observed:
    """One observation into several histograms (a series under two names)."""

    def __init__(self, *histograms: Histogram) -> None:
        self._histograms = histograms

    def observe(self, value: float) -> None:
        for h in self._histograms:
            h.observe(value)


class GatewayMetrics:
    def __init__(self, max_input_tokens: int, max_total_tokens: int) -> None:
        disable_created_metrics()
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.counters = BareCounters()
        for name, text in (
            ("tgi_request_count", "Requests received"),
            ("tgi_request_success", "Requests completed"),
            ("tgi_request_failure", "Requests failed, by error type"),
            ("genfleet_request_continuations", "Requests re-enqueued after losing their worker"),
            ("genfleet_request_attached", "Calls answered by a request that already held their id, by how: "
             "replayed (it had ended), followed (its gateway relays it); and adoptions of requests whose gateway "
             "was gone"),
        ):
            self.counters.declare(name, text)
        r.register(self.counters)

        def hist(name: str, text: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, text, buckets=buckets, registry=r)

        self.duration = _Observed(hist("tgi_request_duration", "End-to-end request duration (s)", _DURATION),
                                  hist("tgi_request_duration_seconds", "End-to-end request duration (s)", _DURATION))
        self.validation = hist("tgi_request_validation_duration", "Validation and tokenization (s)", _DURATION)
        self.queue = hist("tgi_request_queue_duration", "Queued until first scheduled (s)", _DURATION)
        self.inference = hist("tgi_request_inference_duration", "First scheduled until done (s)", _DURATION)
        self.per_token = hist("tgi_request_mean_time_per_token_duration", "Inference time per token (s)", _DURATION)
        self.ttft = hist("genfleet_request_time_to_first_token", "Arrival until first token (s)", _DURATION)
        self.itl = BurstHistogram("genfleet_request_inter_token_latency",
                                  "Time between consecutive tokens of a request (s)", _DURATION)
        r.register(self.itl)
        self.generated = hist("tgi_request_generated_tokens", "Generated tokens per request", _linear(max_total_tokens))
        self.input_length = hist("tgi_request_input_length", "Prompt tokens per request", _linear(max_input_tokens))
        self.max_new = hist("tgi_request_max_new_tokens", "max_new_tokens per request", _linear(max_total_tokens))

        def gauge(name: str, text: str) -> Gauge:
            return Gauge(name, text, registry=r)

        self.queue_size = gauge("tgi_queue_size", "Requests waiting in the model's stream")
        self.batch_size = gauge("tgi_batch_current_size", "Requests running across live workers")
        self.batch_max_total = gauge("tgi_batch_max_total_tokens", "KV capacity in tokens across live workers")
        self.live_workers = gauge("genfleet_live_workers", "Workers with a live heartbeat for this model")
        self.kv_free = gauge("genfleet_kv_free_tokens", "Free KV tokens across live workers")
        self.waiting = gauge("genfleet_worker_waiting", "Requests accepted by workers but not yet scheduled")
        self.in_flight = gauge("genfleet_gateway_in_flight", "Requests this gateway is serving")
        self.pending = gauge("genfleet_stream_pending", "Stream entries delivered to a worker but not yet acknowledged")
        self.worker_running = Gauge("genfleet_fleet_worker_running", "Requests in a live worker's running batch",
                                    ["worker_id"], registry=r)
        self.worker_waiting = Gauge("genfleet_fleet_worker_waiting", "Requests a live worker accepted but has not "
                                    "scheduled", ["worker_id"], registry=r)
        self.model_workers = Gauge("genfleet_model_live_workers", "Live workers serving each model this gateway has "
                                   "opened", ["model"], registry=r)
        self.queue_by_priority = Gauge("genfleet_queue_size_by_priority", "Requests waiting in the model's stream of "
                                       "each priority level", ["priority"], registry=r)
        self.model_queue_size = Gauge("genfleet_model_queue_size", "Requests waiting in each opened model's stream",
                                      ["model"], registry=r)
        self.worker_kv_free = Gauge("genfleet_fleet_worker_free_kv_tokens", "A live worker's free KV tokens",
                                    ["worker_id"], registry=r)

    def observe_start(self, outcome: Outcome, input_length: int, max_new_tokens: int) -> None:
        """A fleet request validated and about to be queued."""
        outcome.validated_at = time.time()
        self.validation.observe(outcome.validated_at - outcome.started)
        self.input_length.observe(input_length)
        self.max_new.observe(max_new_tokens)

    def observe_burst(self, outcome: Outcome, burst: list[Token]) -> None:
        # Tokens of one burst arrived together: the first carries the gap, the rest 0.
        now = time.time()
        if not outcome.tokens:
            outcome.first_token_at = now
            self.ttft.observe(now - outcome.started)
        else:
            self.itl.observe(now - outcome.last_token_at)
        if len(burst) > 1:
            self.itl.observe(0.0, len(burst) - 1)
        outcome.last_token_at = now
        outcome.tokens += burst

    def observe_finish(self, outcome: Outcome) -> None:
        m = self
        m.counters.inc("tgi_request_success")
        m.duration.observe(time.time() - outcome.started)
        m.generated.observe(len(outcome.tokens))
        f = outcome.finish
        if f is not None:
            m.queue.observe(f.queue_time)
            m.inference.observe(f.inference_time)
            m.per_token.observe(f.inference_time / max(1, len(outcome.tokens)))

    def record_failure(self, exc: GenfleetError) -> None:
        self.counters.inc("tgi_request_failure", err=_FAILURE_KIND.get(exc.error_type, "generation"))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    @property
    def family_names(self) -> frozenset[str]:
        """Every family this registry exports (a merged worker series must not repeat one)."""
        return frozenset(f.name for f in self.registry.collect())
