"""Summaries of load runs: percentiles as JSON, and a markdown table for docs/perf.md.

Definitions (as vLLM's and TGI's benchmarks use them): TTFT is request sent -> first token; TPOT
is a request's (end-to-end - TTFT) / (output tokens - 1); ITL is every gap between consecutive
token events of a stream, pooled over requests; end-to-end is request sent -> stream end.
Throughputs count completed requests and their output tokens over the run's wall time.

    python -m load.report load_results/*.json      # the table of earlier runs
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from dataclasses import asdict
from typing import Any

from load.results import RunResult

__all__ = ["percentile", "summarize", "to_payload", "to_markdown", "main"]

_PCTS = (50, 90, 95, 99)


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * pct / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _dist_ms(values: Sequence[float]) -> dict[str, float]:
    out = {"mean": 1000 * sum(values) / len(values) if values else math.nan}
    ordered = sorted(values)
    for p in _PCTS:
        out[f"p{p}"] = 1000 * percentile(ordered, p)
    return out


def summarize(result: RunResult) -> dict[str, Any]:
    ok = [r for r in result.records if r.error is None]
    duration = result.duration or math.nan
    tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in ok if r.ttft is not None and r.output_tokens > 1]
    # Steadiest second-long window of the run, from the 100 ms token bins.
    bins = result.token_times
    peak = max((sum(bins[i:i + 10]) for i in range(max(1, len(bins) - 9))), default=0)
    errors: dict[str, int] = {}
    for r in result.records:
        if r.error is not None:
            key = r.error[:80]
            errors[key] = errors.get(key, 0) + 1
    return {
        "label": result.label,
        "load": result.meta.get("load"),
        "mode": result.meta.get("mode"),
        "requests": len(result.records),
        "completed": len(ok),
        "failed": len(result.records) - len(ok),
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "output_token_throughput": tokens / duration,
        "peak_output_tokens_1s": peak,
        "total_output_tokens": tokens,
        "mean_output_tokens": tokens / len(ok) if ok else math.nan,
        "ttft_ms": _dist_ms([r.ttft for r in ok if r.ttft is not None]),
        "tpot_ms": _dist_ms(tpot),
        "itl_ms": _dist_ms(result.itl),
        "e2e_ms": _dist_ms([r.e2e for r in ok]),
        "errors": errors,
    }


def to_payload(result: RunResult) -> dict[str, Any]:
    """The JSON a run is saved as: its summary, timeline, an ITL sample and every request."""
    summary = summarize(result)
    return {
        "label": result.label,
        "meta": result.meta,
        "summary": summary,
        "timeline": {"bin_s": 0.1, "output_tokens": result.token_times},
        "itl_sample": [round(x, 6) for x in result.itl[:20000]],
        "requests": [asdict(r) for r in result.records],
    }


def to_markdown(payloads: Sequence[dict[str, Any]]) -> str:
    """One row per run: throughputs, then p50 / p99 of each latency in milliseconds."""
    head = ("| run | ok/sent | req/s | out tok/s | TTFT p50 / p99 | TPOT p50 / p99 | ITL p50 / p99 | "
            "E2E p50 / p99 |")
    rows = [head, "|---" * 8 + "|"]
    for payload in payloads:
        s = payload["summary"]

        def pair(name: str) -> str:
            return f"{_fmt(s[name]['p50'])} / {_fmt(s[name]['p99'])}"

        rows.append(
            f"| {s['label']} | {s['completed']}/{s['requests']} | {s['request_throughput']:.2f} | "
            f"{s['output_token_throughput']:,.0f} | {pair('ttft_ms')} | {pair('tpot_ms')} | {pair('itl_ms')} | "
            f"{pair('e2e_ms')} |"
        )
    return "\n".join(rows) + "\n\nLatencies in ms."


def _fmt(ms: float) -> str:
    if math.isnan(ms):
        return "-"
    return f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if not paths:
        print("usage: python -m load.report RESULT.json ...", file=sys.stderr)
        return 2
    payloads = [json.loads(Path(p).read_text()) for p in paths]
    print(to_markdown(payloads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
