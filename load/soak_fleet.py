"""The fleet a soak runs against: `genfleet serve` on CPU with an embedded Redis-compatible server,
and what the soak reads from it (each process's RSS, the gateway's fleet gauges)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

import httpx

from genfleet.embedded_redis import EmbeddedRedis, die_with_parent, free_port

__all__ = ["SoakFleet", "FLEET_GAUGES", "idle"]

# The gateway's /metrics gauges that describe the whole fleet's load.
FLEET_GAUGES = (
    "genfleet_gateway_in_flight",  # requests the gateway holds
    "tgi_queue_size",  # entries in the model's stream no worker took yet
    "genfleet_stream_pending",  # entries taken but not acknowledged
    "tgi_batch_current_size",  # requests running on the workers
    "genfleet_worker_waiting",  # accepted, not yet scheduled
    "genfleet_kv_free_tokens",  # free KV tokens across workers ...
    "tgi_batch_max_total_tokens",  # ... of this many
    "genfleet_live_workers",
)


def idle(gauges: dict[str, float]) -> bool:
    """Nothing held, queued or running anywhere, and every KV block back in the pool."""
    busy = ("genfleet_gateway_in_flight", "tgi_queue_size", "genfleet_stream_pending",
            "tgi_batch_current_size", "genfleet_worker_waiting")
    return (all(gauges.get(name) == 0 for name in busy) and gauges.get("genfleet_live_workers", 0) >= 1
            and gauges.get("genfleet_kv_free_tokens") == gauges.get("tgi_batch_max_total_tokens"))


class SoakFleet:
    def __init__(self, log_path: str | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or tempfile.mkstemp(prefix="genfleet-soak-", suffix=".log")[1]
        self.extra_args = extra_args
        self.redis: EmbeddedRedis | None = None
        self.serve: subprocess.Popen[bytes] | None = None
        self.pids: dict[str, int] = {}
        self._log: IO[bytes] | None = None

    def __enter__(self) -> SoakFleet:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, timeout: float = 300.0) -> None:
        self.redis = EmbeddedRedis().start()
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.serve = subprocess.Popen(
            [sys.executable, "-m", "genfleet", "serve", "--redis-url", self.redis.url,
             "--key-prefix", f"soak{uuid.uuid4().hex[:6]}", "--hostname", "127.0.0.1", "--port", str(self.port),
             "--device", "cpu", "--max-batch-total-tokens", "8192", *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while not idle(self.gauges()):
            if self.serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fleet did not start (serve: {self.serve.poll()}); log in {self.log_path}")
            time.sleep(0.5)
        self.pids = _children_by_role(self.serve.pid)

    def gauges(self) -> dict[str, float]:
        try:
            text = httpx.get(f"{self.base_url}/metrics", timeout=5).text
        except httpx.HTTPError:
            return {}
        found = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in FLEET_GAUGES:
                found[name] = float(value)
        return found

    def wait_idle(self, timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        gauges = self.gauges()
        while not idle(gauges) and time.monotonic() < deadline:
            time.sleep(0.5)
            gauges = self.gauges()
        return gauges

    def rss_kb(self) -> dict[str, int]:
        out = {}
        for role, pid in self.pids.items():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[role] = int(line.split()[1])
        return out

    def stop(self) -> None:
        if self.serve is not None and self.serve.poll() is None:
            self.serve.send_signal(signal.SIGTERM)
            try:
                self.serve.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.serve.kill()
                self.serve.wait()
        if self.redis is not None:
            self.redis.stop()
        if self._log is not None:
            self._log.close()


def _children_by_role(pid: int) -> dict[str, int]:
    """The gateway and worker processes `genfleet serve` (pid) started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"genfleet" in argv:
            role = argv[argv.index(b"genfleet") + 1].decode()
            found[role] = int(entry.name)
    return found
