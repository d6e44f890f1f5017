"""The worker process: startup, the engine loop, and a graceful drain.

Threads: the engine loop runs here (it owns the engine; nothing else touches it); intake
(worker/intake.py) and output (worker/output.py) run beside it and talk to it through queues,
so the loop never waits on Redis or detokenization. A heartbeat thread publishes WorkerInfo
(worker/heartbeat.py); a housekeeping thread reclaims orphaned entries and cancels the requests
of vanished gateways once --gateway-grace-period has passed without another gateway adopting them.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from common.config import WorkerConfig
from common.errors import GATEWAY_GONE
import msgspec

from common.protocol import (
    Adopt, Cancel, Control, Event, EventBatch, GenerateRequest, LoadAdapter, UnloadAdapter, encode,
)
from common.redis_clients import is_cluster, publish, quietly, sync_client
from common.streams import CONSUMER_GROUP, Keys
from worker.batch import Engine, RequestOutput
from worker.checkpoint import Checkpointer
from worker.finish import is_expired
from worker.heartbeat import Heartbeat
from worker.intake import Intake
from worker.lora.control import AdapterControl
from worker.output import OutputProcessor
from worker.reclaim import GatewayWatch, Reclaimer
from worker.request import Request, RequestKey
from worker.step_log import StepLog

if TYPE_CHECKING:
    from worker.metrics import WorkerMetrics

__all__ = ["Worker", "run_worker"]

log = logging.getLogger("genfleet.worker")


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """Engine load as last seen by the engine thread; read by intake and heartbeat threads."""

    running: int = 0
    waiting: int = 0
    free_tokens: int = 0
    admittable: int = 0


class Worker:
    def __init__(self, config: WorkerConfig, engine: Engine, tokenizer: Any, *, device: str = "cpu",
                 max_total_tokens: int = 0, metrics: WorkerMetrics | None = None, quantize: str | None = None,
                 adapters: AdapterControl | None = None) -> None:
        self.config = config
        fleet = config.fleet
        self.worker_id = config.worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.keys = Keys(fleet.key_prefix, fleet.stream_partitions)
        self.model = fleet.model_id
        self.engine = engine
        self.metrics = metrics
        self.device = device
        self.adapters = adapters or AdapterControl(None)  # LoRA: what it serves, loads at run time
        self.adapters.worker_id = self.worker_id
        self.redis = sync_client(
            fleet.effective_redis_url, fleet.redis_cluster, socket_timeout=5.0, socket_connect_timeout=5.0,
            health_check_interval=10,
        )
        self._incoming: queue.SimpleQueue[tuple[bytes | None, GenerateRequest]] = queue.SimpleQueue()
        self._cancels: queue.SimpleQueue[Control] = queue.SimpleQueue()
        self._stops: queue.SimpleQueue[RequestKey] = queue.SimpleQueue()  # ended by the output thread
        self._work = threading.Event()  # set when intake, cancels or stops have something
        self._stopping = threading.Event()
        self._draining = threading.Event()
        self._keys_by_req: dict[str, set[RequestKey]] = {}  # req_id -> its attempts in the engine
        # -> (gateway id, unix time it became the request's gateway), for the dead-gateway check
        self._gateway_of: dict[RequestKey, tuple[str, float]] = {}
        # Adopts of requests not in the engine yet (still queued in the stream): req_id ->
        # (gateway id, monotonic time), applied when one is admitted, forgotten after a TTL.
        self._adopts: dict[str, tuple[str, float]] = {}
        self._snapshot = _Snapshot(admittable=engine.num_admittable())
        # Held while the engine thread moves requests from the handover queue into the engine and
        # refreshes the snapshot, so intake never counts a request twice or not at all.
        self._admit_lock = threading.Lock()
        self.step_count = 0
        self.step_log = StepLog(config.stats_interval)
        checkpoint = (Checkpointer(self.keys, self.worker_id, fleet.resume_ttl, config.checkpoint_interval)
                      if config.checkpoint_tokens else None)
        self.output = OutputProcessor(self.redis, self.keys, self.worker_id, tokenizer, self._stop_from_output,
                                      checkpoint)
        self.intake = Intake(
            self.redis, self.keys, self.model, self.worker_id,
            budget=self._budget, on_request=self._on_request, on_control=self._on_control,
            on_bad_entry=self._on_bad_entry,
        )
        self.reclaimer = Reclaimer(
            self.redis, self.keys, self.model, self.worker_id,
            min_idle_ms=int(fleet.heartbeat_ttl * 1000), max_deliveries=config.max_deliveries,
            deliver=self._on_request,
        )
        self.gateway_watch = GatewayWatch(self.redis, self.keys, config.gateway_grace_period)
        self.heartbeat = Heartbeat(self.redis, self.keys, config, self.worker_id, stats=engine.stats,
                                   adapters=self.adapters, draining=self._draining, stopping=self._stopping,
                                   device=device, quantize=quantize, max_total_tokens=max_total_tokens)
        self._housekeeper = threading.Thread(target=self._housekeeping_loop, name="housekeeping", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self) -> int:
        self.adapters.load_recorded(self.redis, self.keys.runtime_adapters(self.model))
        self.output.start()
        self.intake.start()
        self.heartbeat.start()
        self._housekeeper.start()
        log.info("worker %s serving %s on %s", self.worker_id, self.model, self.device)
        try:
            self._loop()
        finally:
            self._stopping.set()
            self.intake.stop()
            self.output.close()
            self.heartbeat.join(2.0)
            self._housekeeper.join(2.0)
            self.heartbeat.withdraw()
            for stream in self.keys.all_request_streams(self.model):
                quietly(functools.partial(self.redis.xgroup_delconsumer, stream, CONSUMER_GROUP, self.worker_id), log)
            self.redis.close()
        return 0

    def request_stop(self) -> None:
        """SIGTERM: stop taking work, finish what is running within the grace period, exit."""
        if not self._draining.is_set():
            log.info("draining: no new requests; %d in flight", self._snapshot.running + self._snapshot.waiting)
            self._draining.set()
            self.intake.stop_reading()
            self._drain_deadline = time.monotonic() + self.config.fleet.graceful_termination_timeout
            self.heartbeat.publish()
        self._work.set()

    def kill(self) -> None:
        self._stopping.set()
        self._work.set()

    # -- the engine loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        engine = self.engine
        while not self._stopping.is_set():
            self._admit()
            self._apply_cancels()
            if engine.has_unfinished_requests():
                self._step()
            elif self._draining.is_set():
                return
            else:
                if self.metrics is not None:
                    self.metrics.observe_idle(engine.stats())
                self._work.wait(0.05)
                self._work.clear()
            if self._draining.is_set() and time.monotonic() > self._drain_deadline:
                log.warning("grace period over with requests still running; exiting")
                return
            self._refresh_snapshot()

    def _step(self) -> None:
        started = time.perf_counter()
        outputs = self.engine.step()
        elapsed = time.perf_counter() - started
        self.step_count += 1
        self.output.step(self.step_count, outputs)
        self._forget_finished(outputs)
        produced = sum(len(o.new_token_ids) for o in outputs)
        stats = self.engine.stats()
        if self.metrics is not None:
            prefills = stats.last_batch_size - stats.last_batch_num_decode
            self.metrics.observe_step(stats, elapsed, produced, batch_size=len(outputs),
                                      method="prefill" if prefills else "decode", num_new=prefills)
        self.step_log.step(elapsed, produced, stats)

    def _admit(self) -> None:
        with self._admit_lock:
            admitted = self._admit_locked()
            if admitted:
                self._refresh_snapshot_locked()

    def _admit_locked(self) -> int:
        admitted = 0
        while True:
            try:
                entry_id, wire = self._incoming.get_nowait()
            except queue.Empty:
                return admitted
            admitted += 1
            if self.metrics is not None:
                self.metrics.admitted.inc()
            now = time.time()
            adopted = self._adopts.pop(wire.req_id, None)
            if adopted is not None:
                wire = msgspec.structs.replace(wire, gateway_id=adopted[0])
            # The gateway resolved the seed at validation (None only when greedy, which draws none).
            seed = wire.params.seed
            req = Request.from_wire(wire, seed or 0, now)
            if is_expired(wire.deadline, now):
                self.output.accepted(req.key, wire, seed, entry_id)
                self.output.error(req.key, "timeout", "Request deadline exceeded before a worker took it")
                continue
            self.output.accepted(req.key, wire, seed if wire.params.do_sample else None, entry_id)
            refused = self.adapters.admit(req.key, wire.adapter_id) if wire.adapter_id else None
            if refused is not None:  # the gateway saw it announced: unloaded since
                self.output.error(req.key, "validation", refused)
                continue
            try:
                self.engine.add_request(req)
            except ValueError as exc:  # cannot fit this worker: tell the client, don't crash
                self.adapters.release(req.key)
                self.output.error(req.key, "validation", f"Input validation error: {exc}")
                continue
            self._keys_by_req.setdefault(wire.req_id, set()).add(req.key)
            self._gateway_of[req.key] = (wire.gateway_id, now)

    def _apply_cancels(self) -> None:
        while True:
            try:
                key = self._stops.get_nowait()
            except queue.Empty:
                break
            self._drop(key)
        while True:
            try:
                cancel = self._cancels.get_nowait()
            except queue.Empty:
                return
            if isinstance(cancel, Adopt):
                self._adopt(cancel)
                continue
            if isinstance(cancel, (LoadAdapter, UnloadAdapter)):
                answer = self.adapters.handle(cancel)
                self.heartbeat.publish()  # gateways route by the announced adapters: before the answer
                self._reply(cancel.gateway_id, answer)
                continue
            for key in list(self._keys_by_req.get(cancel.req_id, ())):
                if cancel.attempt < 0 or key.attempt == cancel.attempt:
                    self._drop(key)
                    if cancel.reason == GATEWAY_GONE:
                        # Its gateway may only have been starved past its TTL: if it is alive, this
                        # error makes it continue the request elsewhere instead of waiting forever.
                        self.output.error(key, GATEWAY_GONE, "Cancelled: the gateway's heartbeat expired")
                    else:
                        self.output.forget(key)

    def _adopt(self, adopt: Adopt) -> None:
        keys = self._keys_by_req.get(adopt.req_id)
        if not keys:
            now = time.monotonic()
            ttl = self.config.fleet.resume_ttl
            self._adopts = {r: a for r, a in self._adopts.items() if now - a[1] < ttl}
            self._adopts[adopt.req_id] = (adopt.gateway_id, now)
            return
        log.info("request %s adopted by gateway %s", adopt.req_id, adopt.gateway_id)
        for key in keys:
            with self._admit_lock:
                self._gateway_of[key] = (adopt.gateway_id, time.time())
            self.output.adopt(key, adopt.gateway_id)

    def _drop(self, key: RequestKey) -> None:
        """End `key` in the engine without an output (its stream has ended or nobody reads it)."""
        self.engine.abort_request(key)
        self._forget(key)

    def _forget_finished(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            if out.is_last:
                self._forget(out.key)

    def _forget(self, key: RequestKey) -> None:
        self.adapters.release(key)
        with self._admit_lock:
            self._gateway_of.pop(key, None)
        keys = self._keys_by_req.get(key.req_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys_by_req[key.req_id]

    def _reply(self, gateway_id: str, event: Event) -> None:
        batch = EventBatch(self.worker_id, self.step_count, [event])
        quietly(lambda: publish(self.redis, self.keys.gateway_channel(gateway_id), encode(batch),
                                is_cluster(self.redis)), log)

    def _refresh_snapshot(self) -> None:
        with self._admit_lock:
            self._refresh_snapshot_locked()

    def _refresh_snapshot_locked(self) -> None:
        stats = self.engine.stats()
        admittable = 0 if self._draining.is_set() else self.engine.num_admittable()
        self._snapshot = _Snapshot(stats.num_running, stats.num_waiting, stats.num_free_tokens, admittable)
        if admittable > 0:
            self.intake.wake()

    # -- callbacks from other threads ------------------------------------------------------------
    def _budget(self) -> int:
        # Entries handed over but not yet admitted count against the budget.
        with self._admit_lock:
            return max(0, self._snapshot.admittable - self._incoming.qsize())

    def _on_request(self, entry_id: bytes, request: GenerateRequest) -> None:
        self._incoming.put((entry_id, request))
        self._work.set()

    def _on_control(self, cancel: Control) -> None:
        self._cancels.put(cancel)
        self._work.set()

    def _stop_from_output(self, key: RequestKey) -> None:
        # A stop sequence ended the stream: the engine still runs the request until told.
        self._stops.put(key)
        self._work.set()

    def _on_bad_entry(self, stream: str, entry_id: bytes) -> None:
        quietly(lambda: self.redis.xack(stream, CONSUMER_GROUP, entry_id), log)

    # -- housekeeping ----------------------------------------------------------------------------
    def _housekeeping_loop(self) -> None:
        while not self._stopping.wait(self.config.fleet.heartbeat_interval):
            self._housekeeping()

    def _housekeeping(self) -> None:
        try:
            if not self._draining.is_set():
                self.reclaimer.run_once(self._budget())
            with self._admit_lock:
                owners = dict(self._gateway_of)
            orphans = self.gateway_watch.orphans(owners)
        except redis.RedisError as exc:
            log.warning("housekeeping skipped: %s", exc)
            return
        for key in orphans:
            log.info("gateway %s is gone and nobody adopted %s; cancelling it", owners[key][0], key)
            self._on_control(Cancel(key.req_id, key.attempt, GATEWAY_GONE))


def run_worker(config: WorkerConfig) -> int:
    from worker.startup import build_engine

    from common.log import setup_logging
    from worker.metrics import WorkerMetrics, start_metrics_server

    from common.model_source import ModelNotFound
    from worker.parallel import ShardingError
    from worker.lora.peft import AdapterError
    from worker.quant import QuantizationError
    from worker.speculative.heads import SpeculatorError

    setup_logging(config.fleet.json_output, config.fleet.log_level, "worker")
    try:
        engine, tokenizer, device, max_total, quantize, adapters = build_engine(config)
    except (ModelNotFound, QuantizationError, ShardingError, SpeculatorError, AdapterError) as exc:  # a setting error: the message, not a traceback
        log.error("%s", exc)
        print(f"genfleet worker: error: {exc}", file=sys.stderr)
        return 2
    worker = Worker(config, engine, tokenizer, device=device, max_total_tokens=max_total, quantize=quantize,
                    adapters=adapters)
    worker.metrics = WorkerMetrics(worker.worker_id, worker.model, device)
    server = start_metrics_server(config.metrics_port, worker.metrics) if config.metrics_port else None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda *_: worker.request_stop())
    try:
        return worker.run()
    finally:
        if server is not None:
            server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
