"""The worker's announcement: its WorkerInfo under a key that expires after the heartbeat TTL, and
its place in the model's worker registry and in the model registry.

Gateways route by it (load, free KV tokens, adapters, draining) and take a worker whose key has
expired for dead. It is refreshed on a thread of its own, so neither an engine step nor
housekeeping's Redis calls (each may wait up to the socket timeout, as long as the TTL) hold it up;
the engine thread publishes it at once when what gateways route by changes (a drain, an adapter).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from common.config import WorkerConfig
from common.protocol import WorkerInfo, encode
from common.redis_clients import quietly
from common.streams import Keys
from worker.batch import EngineStats
from worker.lora.control import AdapterControl

__all__ = ["Heartbeat"]

log = logging.getLogger("genfleet.worker.heartbeat")


class Heartbeat:
    def __init__(self, client: Any, keys: Keys, config: WorkerConfig, worker_id: str, *,
                 stats: Callable[[], EngineStats], adapters: AdapterControl, draining: threading.Event,
                 stopping: threading.Event, device: str, quantize: str | None, max_total_tokens: int) -> None:
        self._client = client  # a sync Redis (or Redis Cluster) client
        self._keys = keys
        self._config = config
        self._worker_id = worker_id
        self._model = config.fleet.model_id
        self._stats = stats  # the engine's counters, read from this thread as from the engine's
        self._adapters = adapters
        self._draining = draining
        self._stopping = stopping  # the worker's: the thread ends when it is set
        self._device = device
        self._quantize = quantize  # the quantization method serving the model, None = dense
        self._max_total_tokens = max_total_tokens
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def publish(self) -> None:
        stats = self._stats()
        info = WorkerInfo(
            worker_id=self._worker_id,
            model=self._model,
            running=stats.num_running,
            waiting=stats.num_waiting,
            free_kv_tokens=stats.num_free_tokens,
            capacity_tokens=stats.capacity_tokens,
            max_total_tokens=self._max_total_tokens,
            max_batch_size=self._config.max_batch_size,
            started_at=self.started_at,
            updated_at=time.time(),
            draining=self._draining.is_set(),
            metrics_port=self._config.metrics_port,
            device=self._device,
            quantize=self._quantize,
            speculate=stats.speculate,
            speculation=stats.speculation,
            adapters=list(self._adapters.ids),
        )
        ttl_ms = int(self._config.fleet.heartbeat_ttl * 1000)
        pipe = self._client.pipeline(transaction=False)
        pipe.set(self._keys.worker_heartbeat(self._worker_id), encode(info), px=ttl_ms)
        pipe.zadd(self._keys.worker_registry(self._model), {self._worker_id: info.updated_at})
        pipe.zadd(self._keys.model_registry(), {self._model: info.updated_at})
        quietly(pipe.execute, log)

    def withdraw(self) -> None:
        """On exit: gateways stop routing here at once rather than after the TTL."""
        quietly(lambda: self._client.delete(self._keys.worker_heartbeat(self._worker_id)), log)
        quietly(lambda: self._client.zrem(self._keys.worker_registry(self._model), self._worker_id), log)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self.publish()
            self._stopping.wait(self._config.fleet.heartbeat_interval)
