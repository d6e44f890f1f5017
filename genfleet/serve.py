"""`genfleet serve`: a whole local fleet from one command.

Starts a Redis-compatible server on a free loopback port (unless --redis-url is given), converts
the model once, then one gateway and --workers workers as child processes running the same CLI.
Ctrl-C or SIGTERM stops everything it started: children get SIGTERM (a graceful drain), then
SIGKILL after their grace period, and the Redis server last. No process is left behind.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

from common.config import FleetConfig, GatewayConfig, ServeConfig, WorkerConfig, settings_of
from common.model_source import ModelNotFound, resolve_model
from genfleet.embedded_redis import EmbeddedRedis, RedisBinaryNotFound, die_with_parent

__all__ = ["serve", "child_argv"]

log = logging.getLogger("genfleet.serve")


def child_argv(role: str, config: FleetConfig | GatewayConfig | WorkerConfig, fleet: FleetConfig) -> list[str]:
    """The command line that runs `role` with exactly these settings (nothing left to the env)."""
    argv = [sys.executable, "-m", "genfleet", role]
    for cls_config in (fleet, config):
        for f in settings_of(type(cls_config)):
            value = getattr(cls_config, f.name)
            if value is None or value == f.default:
                continue
            argv += ["--" + f.name.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def serve(config: ServeConfig) -> int:
    logging.basicConfig(level=config.gateway.fleet.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fleet = config.gateway.fleet
    try:
        # Convert or download once, before the children race for it.
        resolve_model(fleet.model_id, model_cache=fleet.model_cache, revision=fleet.revision)
    except ModelNotFound as exc:
        print(f"genfleet: error: {exc}", file=sys.stderr)
        return 2

    redis_server: EmbeddedRedis | None = None
    if fleet.redis_url is None:
        try:
            redis_server = EmbeddedRedis().start()
        except RedisBinaryNotFound as exc:
            print(f"genfleet: error: {exc}", file=sys.stderr)
            return 2
        fleet = replace(fleet, redis_url=redis_server.url)
        log.info("started %s on %s", os.path.basename(redis_server.binary), redis_server.url)

    gateway = replace(config.gateway, fleet=fleet)
    worker = replace(config.worker, fleet=fleet)
    children: list[subprocess.Popen[bytes]] = []
    stop_requested = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(config.workers):
            wid = f"{worker.worker_id}-{i}" if worker.worker_id else None
            children.append(subprocess.Popen(child_argv("worker", replace(worker, worker_id=wid), fleet), preexec_fn=die_with_parent))
        children.append(subprocess.Popen(child_argv("gateway", gateway, fleet), preexec_fn=die_with_parent))
        log.info("gateway on http://%s:%d, %d worker(s)", gateway.hostname, gateway.port, config.workers)
        while not stop_requested:
            for child in children:
                code = child.poll()
                if code is not None:
                    log.error("child %s exited with %s; stopping the fleet", child.args[3], code)  # type: ignore[index]
                    stop_requested = True
                    break
            time.sleep(0.2)
    finally:
        grace = max(gateway.graceful_termination_timeout, worker.graceful_termination_timeout)
        _stop_children(children, min(grace, 30.0))
        if redis_server is not None:
            redis_server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [c.returncode for c in children if c.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed else 0


def _stop_children(children: list[subprocess.Popen[bytes]], grace: float) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
