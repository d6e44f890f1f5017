"""`genfleet serve`: a whole local fleet from one command.

Starts a Redis-compatible server on a free loopback port (unless --redis-url is given), converts
the model once, then --workers workers and one gateway as child processes running the same CLI.

Stopping (Ctrl-C or SIGTERM) goes in the order that lets open streams finish: the gateway first
(it stops accepting and drains its streams, which still need workers and Redis), then the workers
(they drain what is left), then Redis. Each step waits for its process's grace period and then
SIGKILLs it; a second Ctrl-C skips the waiting. Children run in a session of their own, so the
terminal's Ctrl-C reaches only this process and the order holds; and each has a death signal, so
a `kill -9` of this process takes every child down with it at once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

from common.config import FleetConfig, GatewayConfig, ServeConfig, WorkerConfig, settings_of
from common.model_source import ModelNotFound, resolve_model
from common.tgi_env import ignored_tgi_variables
from genfleet.cpu_threads import openmp_env, worker_threads
from genfleet.embedded_redis import EmbeddedRedis, RedisBinaryNotFound, die_with_parent, free_port

__all__ = ["serve", "child_argv", "worker_devices"]

log = logging.getLogger("genfleet.serve")

# Seconds past a child's own grace period before it is killed: time to close up after its drain.
_EXIT_MARGIN = 5.0


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


def _spawn(argv: list[str], cpu_threads: int = 0, devices: str | None = None) -> subprocess.Popen[bytes]:
    # TGI variables genfleet ignores were reported once, here; the children need not repeat it.
    ignored = {item.variable.name for item in ignored_tgi_variables(os.environ)}
    env = {k: v for k, v in os.environ.items() if k not in ignored}
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    if cpu_threads:
        openmp_env(env, cpu_threads)
    return subprocess.Popen(argv, preexec_fn=die_with_parent, start_new_session=True, env=env)


def worker_devices(index: int, num_shard: int, visible: str | None) -> str | None:
    """The GPUs of sharded worker `index` when `serve` starts several: the next `num_shard` of the
    visible ones (CUDA_VISIBLE_DEVICES, else 0, 1, ...), so workers never share a GPU. None (the
    environment as it is) for unsharded workers, whose placement is left as it was."""
    if num_shard <= 1:
        return None
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else None
    wanted = range(index * num_shard, (index + 1) * num_shard)
    if ids is None:
        return ",".join(str(i) for i in wanted)
    if wanted.stop > len(ids):
        raise ValueError(f"{index + 1} workers x --num-shard {num_shard} need {wanted.stop} GPUs; "
                         f"CUDA_VISIBLE_DEVICES names {len(ids)}")
    return ",".join(ids[i] for i in wanted)


def serve(config: ServeConfig) -> int:
    logging.basicConfig(level=config.gateway.fleet.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fleet = config.gateway.fleet
    try:
        # Convert or download once, before the children race for it.
        resolve_model(fleet.model_id, model_cache=fleet.model_cache, revision=fleet.revision)
    except ModelNotFound as exc:
        print(f"genfleet: error: {exc}", file=sys.stderr)
        return 2

    shards = config.worker.num_shard or 1
    try:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = [None if config.worker.device == "cpu" else worker_devices(i, shards, visible)
                   for i in range(config.workers)]
    except ValueError as exc:
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

    # One /metrics for the box: each worker's listener on a port of its own, merged by the gateway.
    gateway = replace(config.gateway, fleet=fleet, merge_worker_metrics=True)
    worker = replace(config.worker, fleet=fleet)
    workers: list[subprocess.Popen[bytes]] = []
    gateways: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()  # the first signal: stop in order
    hurry = threading.Event()  # a second signal: stop now

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("second %s: killing the fleet now", signal.Signals(signum).name)
            hurry.set()
        else:
            log.info("%s: stopping the gateway, then the workers, then Redis", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(config.workers):
            wid = f"{worker.worker_id}-{i}" if worker.worker_id else None
            port = worker.metrics_port + i if worker.metrics_port else free_port()
            workers.append(_spawn(child_argv("worker", replace(worker, worker_id=wid, metrics_port=port), fleet),
                                  cpu_threads=worker_threads(config.workers * shards),
                                  devices=devices[i]))
        gateways.append(_spawn(child_argv("gateway", gateway, fleet)))
        log.info("gateway on http://%s:%d, %d worker(s)", gateway.hostname, gateway.port, config.workers)
        while not stop.wait(0.2):
            exited = next((c for c in workers + gateways if c.poll() is not None), None)
            if exited is not None:
                log.error("child %s exited with %s; stopping the fleet", exited.args[3], exited.returncode)  # type: ignore[index]
                stop.set()
    finally:
        _stop_group(gateways, fleet.graceful_termination_timeout + _EXIT_MARGIN, hurry)
        _stop_group(workers, fleet.graceful_termination_timeout + _EXIT_MARGIN, hurry)
        if redis_server is not None:
            redis_server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [c.returncode for c in workers + gateways if c.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed else 0


def _stop_group(children: list[subprocess.Popen[bytes]], grace: float, hurry: threading.Event) -> None:
    """SIGTERM (a graceful drain), wait up to `grace` seconds or until `hurry`, then SIGKILL."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(c.poll() is None for c in children):
        if hurry.wait(0.1):
            break
    for child in children:
        if child.poll() is None:
            log.warning("%s did not stop within %.0fs; killing it", child.args[3], grace)  # type: ignore[index]
            child.kill()
        child.wait()
