"""Redis key, stream, channel and consumer-group names. Names only; no policy lives here."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

__all__ = ["Keys", "CONSUMER_GROUP", "REQUEST_FIELD", "PRIORITY_LEVELS", "MIN_PRIORITY", "MAX_PRIORITY"]

CONSUMER_GROUP = "workers"
REQUEST_FIELD = b"m"  # the one field of a stream entry: the encoded GenerateRequest

# A request's priority: larger is more urgent, 0 the default. Each level has a stream of its own
# per model, so a worker pulls higher levels first however long the lower ones' backlog is.
MIN_PRIORITY, MAX_PRIORITY = -2, 2
PRIORITY_LEVELS = tuple(range(MAX_PRIORITY, MIN_PRIORITY - 1, -1))  # highest first


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "genfleet"
    partitions: int = 1  # request streams per model and level (--stream-partitions); every process agrees

    # NOTE: a Redis Cluster hashes only what is between the first { and }: a partition's priority
    # levels and its dead-letter stream share that hash tag (one slot, so one XREADGROUP may read
    # every level), different models and the partitions of one model get different tags, and so
    # spread over the cluster's slots. Partition 0 keeps the unpartitioned names.
    def request_stream(self, model: str, priority: int = 0, partition: int = 0) -> str:
        base = f"{self.prefix}:req:{{{self._tag(model, partition)}}}"
        return base if priority == 0 else f"{base}:p{priority}"

    def request_streams(self, model: str, partition: int = 0) -> list[str]:
        """Every priority level's stream of one partition of `model`, highest first."""
        return [self.request_stream(model, level, partition) for level in PRIORITY_LEVELS]

    def all_request_streams(self, model: str) -> list[str]:
        return [s for p in range(self.partitions) for s in self.request_streams(model, p)]

    def dead_letter_stream(self, model: str, partition: int = 0) -> str:
        return f"{self.prefix}:dlq:{{{self._tag(model, partition)}}}"

    def partition_of(self, req_id: str) -> int:
        # By request id, so every attempt of a request (its continuations) goes to one partition.
        return zlib.crc32(req_id.encode()) % self.partitions if self.partitions > 1 else 0

    def stream_of(self, model: str, req_id: str, priority: int = 0) -> str:
        return self.request_stream(model, priority, self.partition_of(req_id))

    def model_registry(self) -> str:
        # A sorted set of the fleet's model names, scored by the last heartbeat of a worker of each.
        return f"{self.prefix}:models"

    def worker_registry(self, model: str) -> str:
        # A sorted set of the model's worker ids, scored by their last heartbeat's time: gateways
        # find the heartbeats from it on any shard, without KEYS or SCAN.
        return f"{self.prefix}:workers:{{{model}}}"

    def runtime_adapters(self, model: str) -> str:
        # A hash of the LoRA adapters loaded at run time for `model` (id -> path), written by the
        # gateway that loaded them: a worker that starts later loads them too.
        return f"{self.prefix}:lora:{{{model}}}"

    def gateway_channel(self, gateway_id: str) -> str:
        return f"{self.prefix}:gw:{gateway_id}"

    def worker_channel(self, worker_id: str) -> str:
        return f"{self.prefix}:wk:{worker_id}"

    def control_channel(self, model: str) -> str:
        # Cancels for requests whose owner is not known yet reach every worker of the model.
        return f"{self.prefix}:ctl:{model}"

    def journal(self, req_id: str) -> str:
        # A list with a TTL: the request's life (common/protocol.py JournalEntry), for any gateway
        # to replay. Written by the gateway (attempts, cancels, adoptions) and the owner (events).
        return f"{self.prefix}:log:{req_id}"

    def claim(self, req_id: str) -> str:
        # SET NX by the gateway that generates it (value: the submitter's scope); a second
        # gateway that finds it attaches to the journal instead of generating twice.
        return f"{self.prefix}:run:{req_id}"

    def worker_heartbeat(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def gateway_heartbeat(self, gateway_id: str) -> str:
        return f"{self.prefix}:gateway:{gateway_id}"

    @staticmethod
    def _tag(model: str, partition: int) -> str:
        return model if partition == 0 else f"{model}#{partition}"
