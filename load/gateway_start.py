"""How long a gateway takes from exec to its first /info 200, its RSS then, and whether it maps libtorch.

    python -m load.gateway_start --model-id DIR [--runs 3]

Starts a local Redis-compatible server, then `genfleet gateway` --runs times, one after another.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from genfleet.embedded_redis import EmbeddedRedis, free_port


def measure(model_id: str, redis_url: str, deadline_s: float = 120.0, *, key_prefix: str = "genfleet",
            then: Callable[[str], None] | None = None) -> tuple[float, int, bool]:
    """(seconds to the first /info 200, RSS in MiB, libtorch mapped); `then(base_url)` runs before the last two."""
    port = free_port()
    started = time.monotonic()
    argv = [sys.executable, "-m", "genfleet", "gateway", "--model-id", model_id, "--redis-url", redis_url,
            "--hostname", "127.0.0.1", "--port", str(port), "--key-prefix", key_prefix]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - started < deadline_s and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/info", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the gateway did not answer /info (exit code {proc.poll()})")
        ready = time.monotonic() - started
        if then is not None:
            then(f"http://127.0.0.1:{port}")
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
        mapped = "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
        return ready, rss_kib // 1024, mapped
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    redis = EmbeddedRedis().start()
    try:
        for _ in range(args.runs):
            ready, rss, mapped = measure(args.model_id, redis.url)
            print(f"ready in {ready:.2f} s, RSS {rss} MiB, libtorch mapped: {mapped}")
    finally:
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
