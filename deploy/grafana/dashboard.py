"""Writes deploy/grafana/dashboards/genfleet.json, the provisioned Grafana dashboard.

The dashboard is generated so that its queries stay in one readable place; tests/deploy checks
that the JSON is up to date and that every metric it queries is one our processes export.

    python deploy/grafana/dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards" / "genfleet.json"
DS = {"type": "prometheus", "uid": "prometheus"}

# Gateway metrics (TGI's names, so TGI dashboards keep working) and the gateway's fleet view.
REQUESTS = "tgi_request_count"
FAILURES = "tgi_request_failure"
DURATION = "tgi_request_duration_bucket"
TTFT = "genfleet_request_time_to_first_token_bucket"
LIVE = "genfleet_live_workers"
QUEUE = "tgi_queue_size"
# Worker metrics (worker/metrics.py), one series per replica.
W = "genfleet_worker_"


def _q(*pct_metric: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(65 + i)}
            for i, (legend, expr) in enumerate(pct_metric)]


def _quantiles(bucket: str, by: str = "") -> list[tuple[str, str]]:
    group = f"le{', ' + by if by else ''}"
    return [(f"p{int(q * 100)}", f"histogram_quantile({q}, sum by ({group}) (rate({bucket}[$__rate_interval])))")
            for q in (0.5, 0.9, 0.99)]


def _panel(pid: int, title: str, targets: list[dict[str, Any]], x: int, y: int, *, unit: str = "short",
           kind: str = "timeseries", w: int = 8, h: int = 8, description: str = "") -> dict[str, Any]:
    panel: dict[str, Any] = {
        "id": pid, "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
    }
    if kind == "stat":
        panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    return panel


def build() -> dict[str, Any]:
    rate = "$__rate_interval"
    panels = [
        _panel(1, "Live workers", _q(("heartbeats", f"max({LIVE})"), ("scraped", f"count({W}info)")), 0, 0,
               kind="stat", w=4, h=4,
               description="Workers with a live heartbeat (gateway view) and worker replicas Prometheus scrapes"),
        _panel(2, "Request rate", _q(("req/s", f"sum(rate({REQUESTS}[{rate}]))")), 4, 0, unit="reqps",
               kind="stat", w=4, h=4),
        _panel(3, "Output tokens/s", _q(("tok/s", f"sum(rate({W}generated_tokens_total[{rate}]))")), 8, 0,
               kind="stat", w=4, h=4),
        _panel(4, "Queue", _q(("waiting", f"sum({QUEUE})")), 12, 0, kind="stat", w=4, h=4,
               description="Requests in the model's stream not yet taken by a worker"),
        _panel(5, "Running batch", _q(("running", f"sum({W}batch_current_size)")), 16, 0, kind="stat", w=4, h=4),
        _panel(6, "KV cache in use", _q(("kv", f"avg({W}kv_usage_ratio)")), 20, 0, unit="percentunit",
               kind="stat", w=4, h=4),
        _panel(10, "Requests/s", _q(("all", f"sum(rate({REQUESTS}[{rate}]))"),
                                     ("failed {{err}}", f"sum by (err) (rate({FAILURES}[{rate}]))")),
               0, 4, unit="reqps"),
        _panel(11, "End-to-end latency", _q(*_quantiles(DURATION)), 8, 4, unit="s"),
        _panel(12, "Time to first token", _q(*_quantiles(TTFT)), 16, 4, unit="s"),
        _panel(20, "Output tokens/s per worker",
               _q(("{{instance}}", f"sum by (instance) (rate({W}generated_tokens_total[{rate}]))")), 0, 12),
        _panel(21, "Queue size", _q(("gateway view", f"sum({QUEUE})"),
                                     ("accepted, not scheduled", f"sum({W}queue_size)")), 8, 12),
        _panel(22, "Batch size per worker", _q(("{{instance}}", f"{W}batch_current_size")), 16, 12),
        _panel(30, "KV cache use per worker", _q(("{{instance}}", f"{W}kv_usage_ratio")), 0, 20, unit="percentunit"),
        _panel(31, "Engine step time", _q(*_quantiles(f"{W}step_duration_seconds_bucket")), 8, 20, unit="s"),
        _panel(32, "Prefix cache hit rate / preemptions",
               _q(("hit rate", f"sum(rate({W}prefix_hit_tokens_total[{rate}])) / "
                               f"clamp_min(sum(rate({W}prefix_query_tokens_total[{rate}])), 1)"),
                  ("preemptions/s", f"sum(rate({W}preemptions_total[{rate}]))")), 16, 20),
    ]
    return {
        "uid": "genfleet", "title": "genfleet", "tags": ["genfleet", "llm"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "refresh": "5s", "time": {"from": "now-30m", "to": "now"},
        "editable": False, "panels": panels, "templating": {"list": []}, "annotations": {"list": []},
    }


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
