"""Redis key, stream, channel and consumer-group names. Names only; no policy lives here."""

from __future__ import annotations

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

    # NOTE: the model's request streams and its dead-letter stream share a hash tag so they land
    # in one Redis Cluster slot; everything else spreads freely.
    def request_stream(self, model: str, priority: int = 0) -> str:
        base = f"{self.prefix}:req:{{{model}}}"
        return base if priority == 0 else f"{base}:p{priority}"

    def request_streams(self, model: str) -> list[str]:
        """Every priority level's stream of `model`, highest first."""
        return [self.request_stream(model, level) for level in PRIORITY_LEVELS]

    def dead_letter_stream(self, model: str) -> str:
        return f"{self.prefix}:dlq:{{{model}}}"

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

    def worker_heartbeat_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    def gateway_heartbeat(self, gateway_id: str) -> str:
        return f"{self.prefix}:gateway:{gateway_id}"

    def gateway_heartbeat_pattern(self) -> str:
        return f"{self.prefix}:gateway:*"
