"""PNG plots of load runs: latency CDFs, output throughput over time, latencies against load.

Reads the JSON payloads that load/run_load.py writes, so old runs can be re-plotted:

    python -m load.plots load_results/*.json --out docs/img
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_all", "plot_latency_cdfs", "plot_throughput", "plot_ttft_vs_load", "plot_latency_vs_load"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax: Any, values_ms: list[float], label: str) -> None:
    if not values_ms:
        return
    ordered = sorted(values_ms)
    n = len(ordered)
    ax.plot(ordered, [(i + 1) / n for i in range(n)], label=label)


def _style(ax: Any, title: str, xlabel: str, ylabel: str, legend: bool = True) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    if legend:
        ax.legend(fontsize=8)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency_cdfs(payloads: Sequence[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for payload in payloads:
        ok = [r for r in payload["requests"] if r["error"] is None]
        label = payload["label"]
        _cdf(axes[0], [1000 * r["ttft"] for r in ok if r["ttft"] is not None], label)
        tpot = [1000 * (r["e2e"] - r["ttft"]) / (r["output_tokens"] - 1) for r in ok
                if r["ttft"] is not None and r["output_tokens"] > 1]
        _cdf(axes[1], tpot, label)
        _cdf(axes[2], [1000 * x for x in payload["itl_sample"]], label)
        _cdf(axes[3], [1000 * r["e2e"] for r in ok], label)
    for ax, title in zip(axes, ("TTFT", "TPOT", "inter-token latency", "end-to-end latency")):
        _style(ax, title, "ms", "fraction of gaps" if title == "inter-token latency" else "fraction of requests",
               legend=ax is axes[0])
        ax.set_ylim(0, 1.01)
    return _save(plt, fig, path)


def plot_throughput(payloads: Sequence[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for payload in payloads:
        timeline = payload["timeline"]
        bins, width = timeline["output_tokens"], timeline["bin_s"]
        per_window = max(1, round(1.0 / width))  # 1 s moving sum of the 100 ms bins
        xs, ys = [], []
        for i in range(0, max(0, len(bins) - per_window + 1)):
            xs.append((i + per_window) * width)
            ys.append(sum(bins[i:i + per_window]) / (per_window * width))
        ax.plot(xs, ys, label=payload["label"])
    _style(ax, "output tokens/s over time (1 s window)", "seconds since the run began", "tokens/s")
    return _save(plt, fig, path)


def plot_ttft_vs_load(payloads: Sequence[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    summaries = sorted((p["summary"] for p in payloads), key=lambda s: s["request_throughput"])
    xs = [s["request_throughput"] for s in summaries]
    for pct, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
        ax.plot(xs, [s["ttft_ms"][pct] for s in summaries], style, label=f"TTFT {pct}")
    for s in summaries:
        ax.annotate(s["label"], (s["request_throughput"], s["ttft_ms"]["p50"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    ax.set_yscale("log")
    _style(ax, "TTFT against load", "completed requests/s", "ms")
    return _save(plt, fig, path)


def _finite_loads(payloads: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    # An all-at-once run (rate inf) has no place on a load axis.
    return [p["summary"] for p in payloads if math.isfinite(float(p["summary"]["load"]))]


def plot_latency_vs_load(payloads: Sequence[dict[str, Any]], path: Path) -> Path:
    """TTFT, TPOT and ITL percentiles against the load each run offered (requests/s or users)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    summaries = sorted(_finite_loads(payloads), key=lambda s: float(s["load"]))
    xs = [float(s["load"]) for s in summaries]
    open_loop = summaries[0].get("mode") == "open"
    for ax, key, name in zip(axes, ("ttft_ms", "tpot_ms", "itl_ms"), ("TTFT", "TPOT", "ITL")):
        for pct, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
            ax.plot(xs, [s[key][pct] for s in summaries], style, label=f"{name} {pct}")
        ax.set_yscale("log")
        _style(ax, f"{name} against load", "offered requests/s (Poisson)" if open_loop else "concurrent users", "ms")
    return _save(plt, fig, path)


def plot_all(payloads: Sequence[dict[str, Any]], out: Path, prefix: str = "") -> list[Path]:
    """Every plot the payloads allow: the plots against load need at least two runs."""
    out.mkdir(parents=True, exist_ok=True)
    written = [
        plot_latency_cdfs(payloads, out / f"{prefix}latency_cdf.png"),
        plot_throughput(payloads, out / f"{prefix}throughput.png"),
    ]
    if len(payloads) >= 2:
        written.append(plot_ttft_vs_load(payloads, out / f"{prefix}ttft_vs_load.png"))
    if len(_finite_loads(payloads)) >= 2:
        written.append(plot_latency_vs_load(payloads, out / f"{prefix}latency_vs_load.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.plots")
    p.add_argument("results", nargs="+", help="JSON files written by load.run_load")
    p.add_argument("--out", default=".", help="directory for the PNGs")
    p.add_argument("--prefix", default="", help="file name prefix")
    args = p.parse_args(argv)
    payloads = [json.loads(Path(x).read_text()) for x in args.results]
    for path in plot_all(payloads, Path(args.out), args.prefix):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
