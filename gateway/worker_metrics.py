"""The workers' own metrics on the gateway's /metrics (--merge-worker-metrics; `genfleet serve`).

A single-box user scrapes one endpoint, as with TGI, and sees the engine's series beside the
gateway's: step duration, KV use, prefix-cache hits, TGI's tgi_batch_* series (worker/metrics.py).
The gateway reads each live worker's listener (the --metrics-port its heartbeat names, on this
host) at scrape time, all at once and with a short timeout, and labels every sample with the
worker's id: `sum by (le)` over them gives the fleet's histogram. A worker that does not answer
is left out of that scrape. Where Prometheus scrapes the workers itself (docker-compose), leave
the merge off, or every worker series would be counted twice.

Heartbeats could not carry this: histograms need every bucket, and a heartbeat is a summary.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from common.protocol import WorkerInfo

__all__ = ["worker_metrics"]

_TIMEOUT_S = 1.0


async def worker_metrics(workers: Sequence[WorkerInfo], exclude: Iterable[str]) -> bytes:
    """The merged exposition text of `workers` that announce a metrics port; families in `exclude` are skipped."""
    targets = [w for w in workers if w.metrics_port]
    if not targets:
        return b""
    scraped = await asyncio.gather(*(asyncio.to_thread(_scrape, w.metrics_port) for w in targets))
    skip = set(exclude)
    merged: dict[str, Metric] = {}
    for worker, families in zip(targets, scraped):
        for family in families:
            if family.name in skip:
                continue
            into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue
                labels = s.labels if "worker_id" in s.labels else {**s.labels, "worker_id": worker.worker_id}
                into.add_sample(s.name, labels, s.value)
    return generate_latest(_Families(list(merged.values())))


def _scrape(port: int) -> list[Metric]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=_TIMEOUT_S) as response:  # noqa: S310
            text = response.read().decode("utf-8")
        return list(text_string_to_metric_families(text))
    except (OSError, urllib.error.URLError, ValueError):  # gone, slow, or not a Prometheus listener
        return []


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
