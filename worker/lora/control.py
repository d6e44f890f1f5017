"""The worker's side of its adapters: what it announces, which requests it admits, loads and unloads.

The worker loop calls this on the engine thread only (a load installs weights between steps).
`ids` (read by the heartbeat thread) is what the worker announces in its WorkerInfo; gateways
route and refuse by it. An unload takes the adapter out of `ids` at once, so no new request of
it is admitted, and drops its weights once the last running request of it ends. Answers to the
control messages are events under the message's reply id: Accepted when done, else an Error
whose message says why (TGI's error shape on the gateway's admin route).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from common.protocol import Accepted, Error, Event, LoadAdapter, UnloadAdapter
from worker.lora.peft import AdapterError, AdapterSpec, check_adapter_id
from worker.request import RequestKey

if TYPE_CHECKING:
    from worker.lora.table import AdapterTable

__all__ = ["AdapterControl", "ADAPTER_ERROR"]

log = logging.getLogger("genfleet.worker.lora")

ADAPTER_ERROR = "adapter"  # error_type of a refused load or unload


class AdapterControl:
    def __init__(self, table: AdapterTable | None, worker_id: str = "",
                 forget_prefixes: Callable[[str], None] = lambda _: None) -> None:
        self.table = table  # None: this worker serves no adapters (synthetic engine, a sharded model)
        self.worker_id = worker_id
        self._forget_prefixes = forget_prefixes  # the block manager's: cached KV of a dropped adapter
        self._adapter_of: dict[RequestKey, str] = {}  # the running requests that use an adapter
        self._retiring: set[str] = set()  # unloaded, waiting for their last request to end
        self.ids: tuple[str, ...] = ()

    def preload(self, spec: AdapterSpec) -> None:
        """--lora-adapters at start: raises AdapterError, which stops the start."""
        if self.table is None:
            raise AdapterError("--lora-adapters: this worker cannot serve adapters (a sharded or synthetic model)")
        self.table.load(spec)
        self._announce()

    def load_recorded(self, client: redis.Redis, key: str) -> None:
        """At start, after --lora-adapters: the model's adapters loaded at run time (the hash `key`,
        id -> path, as the gateway recorded them), so that this worker serves what the others do."""
        try:
            recorded = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
        except redis.RedisError as exc:
            log.warning("cannot read the fleet's runtime LoRA adapters: %s", exc)
            return
        for adapter_id, path in sorted(recorded.items()):
            if self.table is None or adapter_id in self.ids:
                continue
            try:
                self.table.load(AdapterSpec(check_adapter_id(adapter_id), path))
            except AdapterError as exc:  # the others serve it: this worker cannot, and says why
                log.error("LoRA adapter %s, loaded at run time by the fleet, cannot be loaded here: %s", adapter_id, exc)
        self._announce()

    def admit(self, key: RequestKey, adapter_id: str) -> str | None:
        """None when the worker serves `adapter_id` (the request is then counted as its user), else why not."""
        if adapter_id not in self.ids:
            served = ", ".join(self.ids) or "none"
            return f"Input validation error: adapter `{adapter_id}` is not loaded on this worker (loaded: {served})"
        self._adapter_of[key] = adapter_id
        return None

    def release(self, key: RequestKey) -> None:
        adapter_id = self._adapter_of.pop(key, None)
        if adapter_id in self._retiring and adapter_id not in self._adapter_of.values():
            self._drop(adapter_id)

    def handle(self, msg: LoadAdapter | UnloadAdapter) -> Event:
        try:
            if isinstance(msg, LoadAdapter):
                self._load(msg)
            else:
                self._unload(msg.adapter_id)
        except AdapterError as exc:
            log.warning("LoRA %s of %s refused: %s", type(msg).__name__, msg.adapter_id, exc)
            return Error(msg.reply_id, 0, ADAPTER_ERROR, f"worker {self.worker_id}: {exc}")
        return Accepted(msg.reply_id, 0, self.worker_id)

    def _load(self, msg: LoadAdapter) -> None:
        if self.table is None:
            raise AdapterError(f"worker {self.worker_id} cannot serve adapters (a sharded or synthetic model)")
        if msg.adapter_id in self._retiring:
            raise AdapterError(f"The lora adapter '{msg.adapter_id}' is being unloaded (requests of it are still "
                               "running); load it again once they end")
        if msg.adapter_id in self.ids:
            raise AdapterError(f"The lora adapter '{msg.adapter_id}' has already been loaded")
        self.table.load(AdapterSpec(check_adapter_id(msg.adapter_id), msg.path))
        self._announce()

    def _unload(self, adapter_id: str) -> None:
        if adapter_id not in self.ids:
            raise AdapterError(f"The lora adapter '{adapter_id}' cannot be found")
        self._retiring.add(adapter_id)
        self._announce()
        if adapter_id not in self._adapter_of.values():
            self._drop(adapter_id)

    def _drop(self, adapter_id: str) -> None:
        self._retiring.discard(adapter_id)
        if self.table is not None:
            self.table.unload(adapter_id)
        self._forget_prefixes(adapter_id)
        self._announce()

    def _announce(self) -> None:
        served = self.table.ids if self.table is not None else ()
        self.ids = tuple(a for a in served if a not in self._retiring)
