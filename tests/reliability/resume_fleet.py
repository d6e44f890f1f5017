"""A fleet of synthetic workers (50 tokens/s per stream, no model) and named gateways on a real
Redis, for the resume tests: processes to kill and restart by name."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field

from genfleet.embedded_redis import free_port
from tests.integration.fleet import start_gateway, start_worker, wait_healthy
from tests.reliability.harness import wait_workers_idle

__all__ = ["SYNTHETIC", "ADMITTED", "Fleet", "synthetic_fleet"]

SYNTHETIC = ("--synthetic-tokens-per-s", "50", "--max-batch-total-tokens", "65536")
ADMITTED = "genfleet_worker_admitted_requests_total"


@dataclass
class Fleet:
    redis_url: str
    prefix: str
    metrics_ports: list[int] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def gateway(self, name: str, *args: str) -> None:
        self.ports.setdefault(name, free_port())
        self.procs[name] = start_gateway(self.redis_url, self.prefix, self.ports[name], f"{self.prefix}-{name}", *args)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def synthetic_fleet(redis_url: str, workers: int, grace: str, gateways: dict[str, tuple[str, ...]],
           worker_args: tuple[str, ...] = ()) -> Fleet:
    fleet = Fleet(redis_url, f"rs{uuid.uuid4().hex[:6]}")
    for i in range(workers):
        port = free_port()
        fleet.metrics_ports.append(port)
        fleet.procs[f"w{i}"] = start_worker(redis_url, fleet.prefix, f"{fleet.prefix}-w{i}", *SYNTHETIC,
                                            "--gateway-grace-period", grace, "--metrics-port", str(port),
                                            *worker_args)
    for name, args in gateways.items():
        fleet.gateway(name, *args)
    try:
        for name in gateways:
            wait_healthy(fleet.url(name), list(fleet.procs.values()), timeout=90)
        wait_workers_idle(redis_url, fleet.prefix, expect=workers, timeout=60)
    except BaseException:
        fleet.stop()
        raise
    return fleet
