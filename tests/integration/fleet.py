"""Start real fleet processes (gateway and workers through the `genfleet` CLI) for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from genfleet.embedded_redis import die_with_parent, free_port

__all__ = ["FleetProcesses", "start_worker", "start_gateway", "wait_healthy"]

_LOG_DIR = Path(os.environ.get("GENFLEET_TEST_LOGS", "/tmp/genfleet-test-logs"))


def _spawn(role: str, args: list[str], name: str) -> subprocess.Popen[bytes]:
    _LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = open(_LOG_DIR / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "genfleet", role, *args],
        stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent,
    )


def start_worker(redis_url: str, prefix: str, name: str, *extra: str) -> subprocess.Popen[bytes]:
    # float32 unless a test names its dtype: the suite's greedy parity is against transformers'
    # float32 (a CPU with native bfloat16 serves bfloat16 by default; tests/genfleet/test_serve.py
    # runs that default end to end).
    dtype = () if "--dtype" in extra else ("--dtype", "float32")
    return _spawn(
        "worker",
        ["--redis-url", redis_url, "--key-prefix", prefix, "--worker-id", name, "--device", "cpu",
         "--heartbeat-interval", "0.5", "--heartbeat-ttl", "2", *dtype, *extra],
        name,
    )


def start_gateway(redis_url: str, prefix: str, port: int, name: str, *extra: str) -> subprocess.Popen[bytes]:
    return _spawn(
        "gateway",
        ["--redis-url", redis_url, "--key-prefix", prefix, "--hostname", "127.0.0.1", "--port", str(port),
         "--gateway-id", name, "--heartbeat-interval", "0.5", "--heartbeat-ttl", "2", *extra],
        name,
    )


def wait_healthy(base_url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args} exited with {p.returncode}; logs in {_LOG_DIR}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"fleet at {base_url} not healthy after {timeout}s; logs in {_LOG_DIR}")


@dataclass
class FleetProcesses:
    redis_url: str
    prefix: str
    port: int = field(default_factory=free_port)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    gateways: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, num_workers: int = 1, worker_args: tuple[str, ...] = (), gateway_args: tuple[str, ...] = ()) -> FleetProcesses:
        for i in range(num_workers):
            self.workers.append(start_worker(self.redis_url, self.prefix, f"{self.prefix}-w{i}", *worker_args))
        self.gateways.append(start_gateway(self.redis_url, self.prefix, self.port, f"{self.prefix}-g0", *gateway_args))
        wait_healthy(self.base_url, self.workers + self.gateways)
        return self

    def stop(self) -> None:
        for p in self.gateways + self.workers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.gateways + self.workers:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
