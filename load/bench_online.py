"""An online run: `genfleet serve` under Poisson arrivals at several rates, the load generator's report.

Starts the whole fleet path once (Redis + gateway + worker, random weights of --model-dir's
config.json, or of a built-in shape with --shape and --tokenizer-dir), warms it up, then sweeps
load/run_load.py's open loop over --rates with the chat-like synthetic mix (or a ShareGPT-style
file): per rate a JSON payload, and for the sweep summary.md (TTFT / TPOT / ITL / E2E p50 and
p99) and the plots, latencies against load among them, the way vLLM's serving curves are drawn.

    python -m load.bench_online --shape 8b --tokenizer-dir DIR --rates 4,8,16,32 --out DIR

Flags it does not know go to the worker (e.g. `--max-batch-size 256 --cuda-graphs 1,2,4`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from load.bench_fleet import serving
from load.run_load import main as run_load
from load.sse_client import Target, stream_sse

__all__ = ["main"]


def _model_dir(args: argparse.Namespace, root: Path) -> Path:
    if args.model_dir is not None:
        return args.model_dir  # type: ignore[no-any-return]
    from load.shapes import ALIASES, write_model_dir

    return write_model_dir(root, ALIASES[args.shape], args.tokenizer_dir)


async def _warm_up(target: Target, n: int = 4) -> None:
    body = b'{"inputs": "warm up the kernels", "parameters": {"max_new_tokens": 8}}'

    async def one() -> None:
        async for _ in stream_sse(target, "/generate_stream", body):
            pass

    await asyncio.gather(*(one() for _ in range(n)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.bench_online", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-dir", type=Path, help="config.json + tokenizer files (weights are random)")
    where.add_argument("--shape", choices=("8b", "smollm2", "mixtral"), help="a built-in shape (needs --tokenizer-dir)")
    p.add_argument("--tokenizer-dir", type=Path, default=None, help="tokenizer files for --shape")
    p.add_argument("--rates", default="2,4,8", help="requests/s, comma list")
    p.add_argument("--num-requests", type=int, default=200, help="requests per rate at most")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of sending per rate at most")
    p.add_argument("--prompts", default="synthetic", help="'synthetic' or a ShareGPT-style JSON file")
    p.add_argument("--max-new-tokens", type=int, default=None, help="fix every output budget (default: the mix's)")
    p.add_argument("--api", default="tgi", help="route the client streams from (load/run_load.py's --api)")
    p.add_argument("--out", type=Path, default=Path("load_results/online"))
    p.add_argument("--log", type=Path, default=None, help="where the fleet's output goes")
    p.add_argument("--ready-timeout", type=float, default=600.0)
    args, worker_flags = p.parse_known_args(argv)
    if args.shape and args.tokenizer_dir is None:
        p.error("--shape needs --tokenizer-dir")
    rates = [float(r) for r in args.rates.split(",")]
    if not rates or any(not r > 0 for r in rates):
        p.error(f"--rates must be positive requests/s, got {args.rates!r}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _model_dir(args, Path(tmp))
        # Admission must never be the limit being measured: room for every request of a rate.
        with serving(model_dir, args.num_requests, worker_flags, args.log, args.ready_timeout) as target:
            asyncio.run(_warm_up(target))
            # Random weights rarely end an answer, and ignore_eos makes each use its whole budget.
            return run_load(["--url", f"http://{target.host}:{target.port}", "--api", args.api, "--mode", "open",
                             "--rate", ",".join(f"{r:g}" for r in rates), "--num-requests", str(args.num_requests),
                             "--duration", str(args.duration), "--prompts", args.prompts, "--ignore-eos",
                             "--no-progress", "--out", str(args.out),
                             *(["--max-new-tokens", str(args.max_new_tokens)] if args.max_new_tokens else [])])


if __name__ == "__main__":
    sys.exit(main())
