"""Prometheus pieces in TGI's style, shared by the gateway's and the workers' metrics.

TGI renders counters without a `_total` suffix (its Grafana dashboard queries `tgi_request_count`),
so `BareCounters` exports them as untyped samples under their bare names; `DURATION_BUCKETS` are
TGI's buckets for every metric whose name ends in `duration` (1.5e-4 x 1.5^k seconds).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client.core import Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

__all__ = ["BareCounters", "DURATION_BUCKETS"]

DURATION_BUCKETS = tuple(1.5e-4 * 1.5**k for k in range(35))


class BareCounters(Collector):
    """Monotonic counters exported under their bare names (TGI style)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self._help: dict[str, str] = {}

    def declare(self, name: str, help_text: str) -> None:
        self._help[name] = help_text
        self._values.setdefault(name, {})

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + amount

    def get(self, name: str, **labels: str) -> float:
        return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            for name, series in self._values.items():
                label_names = sorted({k for key in series for k, _ in key})
                family = UnknownMetricFamily(name, self._help.get(name, name), labels=label_names)
                if not series and not label_names:
                    family.add_metric([], 0.0)
                for key, value in series.items():
                    d = dict(key)
                    family.add_metric([d.get(n, "") for n in label_names], value)
                yield family
