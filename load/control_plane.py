"""Control-plane capacity with model-free workers: gateway + Redis + pub/sub + SSE, measured alone.

Starts a private Redis-compatible server, one gateway and N synthetic workers
(`--synthetic-tokens-per-s`) on loopback through the `genfleet` CLI, drives them with
load/run_load.py's client in this process, and records each process's CPU time so the table can
name the bottleneck. Three scenarios:

- relay:   one gateway relaying `--streams` concurrent streams, each sending request after request
           for `--duration` (workers offer far more tokens than a gateway relays); with the workers'
           per-step token checkpoints on and off (`--relay-checkpoint on,off`), in the same run
- scaling: 1 and 4 workers with a small batch each, so the workers are the bottleneck
- latency: one stream at a time, fleet path against the same engine stepped in-process
- cluster: the relay with 2 gateways through one Redis, then through a three-primary Redis Cluster
           (--redis-cluster; the gateways' ids chosen so their channels live on different shards),
           with each Redis process's CPU and the Redis commands per token and per request

    python -m load.control_plane --scenario all --out load_results/control_plane
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from common.config import DEFAULT_MODEL_ID, WorkerConfig
from common.sampling_params import SamplingParams
from common.streams import Keys
from genfleet.embedded_redis import EmbeddedRedis, die_with_parent, free_port
from load.apis import get_api
from load.redis_topology import LocalCluster
from load.report import percentile, to_markdown, to_payload
from load.results import RunResult
from load.run_load import run_async, run_closed_loop
from load.sse_client import Target
from load.workloads import PromptSpec

__all__ = ["Fleet", "main"]

_TICKS = os.sysconf("SC_CLK_TCK")


def machine_share(seconds: float = 0.5) -> float:
    """CPU seconds one busy thread gets per wall second right now: 1.0 on an idle machine, less
    when other work shares the cores (every figure here depends on it, so it is recorded)."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        pass
    return (time.process_time() - cpu0) / (time.perf_counter() - wall0)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


@dataclass
class Fleet:
    workers: int
    rate: float  # synthetic tokens/s per request
    batch: int  # --max-batch-size per worker
    log_dir: Path
    worker_args: tuple[str, ...] = ()
    gateways: int = 1
    cluster: bool = False  # a three-primary Redis Cluster instead of one server
    ports: list[int] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    servers: list[EmbeddedRedis] = field(default_factory=list)
    topology: LocalCluster | None = None

    @property
    def port(self) -> int:
        return self.ports[0]

    def start(self) -> Fleet:
        if self.cluster:
            self.topology = LocalCluster(3).start()
            self.servers = self.topology.nodes
            url = self.topology.url
        else:
            self.servers = [EmbeddedRedis().start()]
            url = self.servers[0].url
        common = ["--redis-url", url, "--key-prefix", "cp", "--model-id", DEFAULT_MODEL_ID,
                  *(["--redis-cluster"] if self.cluster else [])]
        for i in range(self.workers):
            self._spawn(f"worker{i}", ["worker", *common, "--worker-id", f"w{i}", "--device", "cpu",
                                       "--synthetic-tokens-per-s", str(self.rate),
                                       "--max-batch-size", str(self.batch), *self.worker_args])
        for i, gateway_id in enumerate(self._gateway_ids()):
            self.ports.append(free_port())
            self._spawn(f"gateway{i}", ["gateway", *common, "--hostname", "127.0.0.1", "--port", str(self.ports[-1]),
                                        "--gateway-id", gateway_id, "--max-concurrent-requests", "4096"])
        self._wait_healthy(180.0)
        return self

    def _gateway_ids(self) -> list[str]:
        if self.topology is None:
            return [f"g{i}" for i in range(self.gateways)]
        # Ids whose channels hash to different primaries, so the token traffic splits over the shards.
        ids: list[str] = []
        shards: set[int] = set()
        for n in range(1000):
            shard = self.topology.node_of_slot(key_slot(Keys("cp").gateway_channel(f"g{n}").encode()))
            if shard not in shards or len(shards) == len(self.servers):
                ids.append(f"g{n}")
                shards.add(shard)
            if len(ids) == self.gateways:
                break
        return ids

    def redis_calls(self) -> dict[str, int]:
        """Commands each server has run so far, by name (INFO commandstats), summed over servers."""
        calls: dict[str, int] = {}
        for server in self.servers:
            client = redis.Redis(port=server.port)
            try:
                for name, stats in client.info("commandstats").items():
                    command = name.removeprefix("cmdstat_")
                    calls[command] = calls.get(command, 0) + int(stats["calls"])
            finally:
                client.close()
        return calls

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "genfleet", *argv], stdout=log,
                                            stderr=subprocess.STDOUT, preexec_fn=die_with_parent)

    def _wait_healthy(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited; logs in {self.log_dir}")
            try:
                if all(httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
                       for port in self.ports):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"fleet not healthy after {timeout}s; logs in {self.log_dir}")

    def cpu(self) -> dict[str, float]:
        pids = {name: p.pid for name, p in self.procs.items()}
        for i, server in enumerate(self.servers):
            if server.proc is not None:
                pids[f"redis{i}" if self.cluster else "redis"] = server.proc.pid
        pids["client"] = os.getpid()
        return {name: _cpu_seconds(pid) for name, pid in pids.items()}

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for server in self.servers:
            server.stop()


@contextmanager
def _fleet(workers: int, rate: float, batch: int, log_dir: Path, worker_args: tuple[str, ...] = (),
           gateways: int = 1, cluster: bool = False) -> Iterator[Fleet]:
    fleet = Fleet(workers, rate, batch, log_dir, worker_args, gateways, cluster)
    try:
        yield fleet.start()
    finally:
        fleet.stop()


def _drive(fleet: Fleet, users: int, requests: int, max_new: int, duration: float, label: str,
           meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    specs = [PromptSpec(f"Request {i}: tell me a story about the sea.", max_new) for i in range(requests)]
    share, load = machine_share(), os.getloadavg()[0]
    calls_before, before, t0 = fleet.redis_calls(), fleet.cpu(), time.perf_counter()
    targets = [Target("127.0.0.1", port) for port in fleet.ports]
    result: RunResult = run_async(run_closed_loop(get_api("tgi"), targets, specs, users,
                                                    duration, 120.0, label, meta))
    wall = time.perf_counter() - t0
    after, calls_after = fleet.cpu(), fleet.redis_calls()
    cpu_share: dict[str, float] = {}
    for name in after:
        group = "workers" if name.startswith("worker") else "gateway" if name.startswith("gateway") else name
        cpu_share[group] = round(cpu_share.get(group, 0.0) + (after[name] - before[name]) / wall, 3)
        if name.startswith("redis") and name != "redis":  # a cluster's shards, and their sum
            cpu_share["redis"] = round(cpu_share.get("redis", 0.0) + (after[name] - before[name]) / wall, 3)
    payload = to_payload(result)
    payload["cpu_share"] = cpu_share  # CPU seconds per wall second, per process (2 cores = 2.0)
    payload["redis_calls"] = {k: calls_after[k] - calls_before.get(k, 0) for k in calls_after
                              if calls_after[k] > calls_before.get(k, 0)}
    payload["machine"] = {"busy_thread_share_before": round(share, 3), "loadavg_1m_before": load,
                          "loadavg_1m_after": os.getloadavg()[0]}
    if not fleet.cluster:
        client = redis.Redis(port=fleet.servers[0].port)
        payload["redis_used_memory_peak"] = int(client.info("memory")["used_memory_peak"])
        client.close()
    return payload, cpu_share


def relay(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    payloads = []
    # Every stream sends request after request until --duration, so the figure is the steady state
    # rather than one round's ramp-up and tail.
    rounds = max(1, math.ceil(args.duration * args.relay_rate / args.relay_tokens)) + 1
    for workers, checkpoint in [(w, c) for w in args.relay_workers for c in args.relay_checkpoint]:
        batch = -(-args.streams // workers)
        worker_args = ("--checkpoint-tokens", "true" if checkpoint == "on" else "false")
        with _fleet(workers, args.relay_rate, batch, out / "logs", worker_args) as fleet:
            label = f"relay-{args.streams}streams-{workers}w-checkpoint-{checkpoint}"
            meta = {"scenario": "relay", "workers": workers, "rate": args.relay_rate, "batch": batch, "load": args.streams,
                    "tokens": args.relay_tokens, "checkpoint": checkpoint}
            payload, cpu = _drive(fleet, args.streams, args.streams * rounds, args.relay_tokens, args.duration, label,
                                  meta)
            payloads.append(payload)
            print(f"{label}: {payload['summary']['output_token_throughput']:,.0f} tok/s; cpu {cpu}", file=sys.stderr)
    return payloads


def cluster(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """The relay with 2 gateways, one Redis against a three-primary cluster, in the same run."""
    payloads = []
    rounds = max(1, math.ceil(args.duration * args.relay_rate / args.relay_tokens)) + 1
    workers = args.relay_workers[-1]
    batch = -(-args.streams // workers)
    for on_cluster in (False, True):
        with _fleet(workers, args.relay_rate, batch, out / "logs", gateways=2, cluster=on_cluster) as fleet:
            label = f"relay-2gw-{'cluster3' if on_cluster else 'single'}"
            meta = {"scenario": "cluster", "workers": workers, "gateways": 2, "cluster": on_cluster,
                    "rate": args.relay_rate, "batch": batch, "load": args.streams, "tokens": args.relay_tokens}
            payload, cpu = _drive(fleet, args.streams, args.streams * rounds, args.relay_tokens, args.duration, label,
                                  meta)
            s = payload["summary"]
            tokens = s["output_token_throughput"] * s["duration_s"] or 1.0
            payload["redis_calls_per_token"] = {k: v / tokens for k, v in sorted(payload["redis_calls"].items())}
            payloads.append(payload)
            print(f"{label}: {s['output_token_throughput']:,.0f} tok/s; cpu {cpu}; redis calls "
                  f"{payload['redis_calls']}", file=sys.stderr)
    return payloads


def scaling(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    payloads = []
    for workers in (1, 4):
        with _fleet(workers, args.scale_rate, args.scale_batch, out / "logs") as fleet:
            users = 4 * args.scale_batch * 2  # twice what four workers can run: workers always full
            label = f"scaling-{workers}w"
            meta = {"scenario": "scaling", "workers": workers, "rate": args.scale_rate, "batch": args.scale_batch,
                    "load": users}
            payload, cpu = _drive(fleet, users, users * 3, args.scale_tokens, args.duration, label, meta)
            payloads.append(payload)
            print(f"{label}: {payload['summary']['output_token_throughput']:,.0f} tok/s; cpu {cpu}", file=sys.stderr)
    return payloads


def latency(args: argparse.Namespace, out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    n, rate, tokens = args.latency_requests, args.latency_rate, args.latency_tokens
    direct = _direct_runs(n, rate, tokens)
    with _fleet(1, rate, 8, out / "logs") as fleet:
        meta = {"scenario": "latency", "workers": 1, "rate": rate, "load": 1}
        payload, _ = _drive(fleet, 1, n, tokens, args.duration, "latency-fleet", meta)
    ok = [r for r in payload["requests"] if r["error"] is None]
    fleet_e2e = sorted(r["e2e"] for r in ok)
    fleet_ttft = sorted(r["ttft"] for r in ok)
    added = {
        "tokens_per_request": tokens,
        "engine_rate": rate,
        "direct_ttft_p50_ms": 1000 * percentile(sorted(d["ttft"] for d in direct), 50),
        "fleet_ttft_p50_ms": 1000 * percentile(fleet_ttft, 50),
        "direct_e2e_p50_ms": 1000 * percentile(sorted(d["e2e"] for d in direct), 50),
        "fleet_e2e_p50_ms": 1000 * percentile(fleet_e2e, 50),
        "fleet_itl_p50_ms": payload["summary"]["itl_ms"]["p50"],
        "direct_itl_p50_ms": 1000 * percentile(sorted(g for d in direct for g in d["itl"]), 50),
    }
    added["added_per_token_p50_ms"] = (added["fleet_e2e_p50_ms"] - added["direct_e2e_p50_ms"]) / tokens
    added["added_ttft_p50_ms"] = added["fleet_ttft_p50_ms"] - added["direct_ttft_p50_ms"]
    return [payload], added


def _direct_runs(n: int, rate: float, tokens: int) -> list[dict[str, Any]]:
    """The same synthetic engine called in-process: add_request, then step until it finishes."""
    from worker.request import Request, RequestKey
    from worker.synthetic import SyntheticEngine

    runs = []
    for i in range(n):
        engine = SyntheticEngine(WorkerConfig(synthetic_tokens_per_s=rate), vocab_size=49152)
        start = time.perf_counter()
        engine.add_request(Request(RequestKey(f"d{i}", 0), [1, 2, 3], SamplingParams(max_new_tokens=tokens), i, time.time()))
        times = []
        while engine.has_unfinished_requests():
            for out in engine.step():
                times += [time.perf_counter()] * len(out.new_token_ids)
        runs.append({"ttft": times[0] - start, "e2e": times[-1] - start,
                     "itl": [b - a for a, b in zip(times, times[1:])]})
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.control_plane", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=("relay", "scaling", "latency", "cluster", "all"), default="all")
    p.add_argument("--out", default="load_results/control_plane")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of sending per run at most")
    p.add_argument("--streams", type=int, default=256)
    p.add_argument("--relay-workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    # Offered: streams x rate = 256,000 tokens/s, far above what one gateway relays, so the
    # gateway (and the cores it shares) is what the relay figure measures.
    p.add_argument("--relay-checkpoint", type=lambda s: s.split(","), default=["on", "off"],
                   help="worker token checkpoints (--checkpoint-tokens) in the relay runs: on, off or on,off")
    p.add_argument("--relay-rate", type=float, default=1000.0, help="synthetic tokens/s per stream")
    p.add_argument("--relay-tokens", type=int, default=1000, help="tokens per relay request")
    p.add_argument("--scale-rate", type=float, default=50.0)
    p.add_argument("--scale-batch", type=int, default=8)
    p.add_argument("--scale-tokens", type=int, default=100)
    p.add_argument("--latency-requests", type=int, default=20)
    p.add_argument("--latency-rate", type=float, default=100.0)
    p.add_argument("--latency-tokens", type=int, default=50)
    p.add_argument("--plots", default=None, help="directory for PNG plots (e.g. docs/img)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payloads: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"command": " ".join(["python -m load.control_plane", *sys.argv[1:]]),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                             "cpus": os.cpu_count()}
    if args.scenario in ("relay", "all"):
        payloads += relay(args, out)
    if args.scenario in ("scaling", "all"):
        scaled = scaling(args, out)
        payloads += scaled
        one, four = (s["summary"]["output_token_throughput"] for s in scaled)
        extra["scaling_4_over_1"] = four / one if one else float("nan")
    if args.scenario in ("latency", "all"):
        runs, extra["latency"] = latency(args, out)
        payloads += runs
    if args.scenario in ("cluster", "all"):
        payloads += cluster(args, out)
    for payload in payloads:
        (out / f"{payload['label']}.json").write_text(json.dumps(payload, indent=1))
    (out / "extra.json").write_text(json.dumps(extra, indent=1))
    table = to_markdown(payloads)
    columns = ["client", "gateway", "redis", "redis0", "redis1", "redis2", "workers"]
    cpu_rows = ["| run | " + " | ".join(columns) + " | busy-thread share before | load avg before / after |",
                "|---" * (3 + len(columns)) + "|"]
    for payload in payloads:
        m = payload["machine"]
        cpu_rows.append(f"| {payload['label']} | " + " | ".join(
            f"{payload['cpu_share'].get(k, 0.0):.2f}" for k in columns) +
            f" | {m['busy_thread_share_before']:.2f} | {m['loadavg_1m_before']:.1f} / {m['loadavg_1m_after']:.1f} |")
    report = table + "\n\nCPU seconds per second of wall time:\n\n" + "\n".join(cpu_rows) + "\n\n" + \
        "```json\n" + json.dumps(extra, indent=1) + "\n```\n"
    (out / "summary.md").write_text(report)
    print(report)
    if args.plots:
        from load.plots import plot_all

        for path in plot_all(payloads, Path(args.plots), prefix="control_plane_"):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
