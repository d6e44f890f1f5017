"""Everything a route needs, built once in the app's lifespan and reached as `request.app.state.ctx`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import Request

from common.config import GatewayConfig
from gateway.permits import Bodies, Permits
from gateway.fleet import FleetView
from gateway.lifecycle import Lifecycle
from gateway.metrics import GatewayMetrics
from gateway.queue_client import QueueClient
from gateway.tokenizer import Tokenizer
from gateway.validation import Limits

__all__ = ["GatewayContext", "ctx_of"]


@dataclass
class GatewayContext:
    config: GatewayConfig
    model_id: str
    tokenizer: Tokenizer
    model_limits: Limits  # from the settings and the model's files (common/context_length.py)
    queue_client: QueueClient
    fleet: FleetView
    lifecycle: Lifecycle
    metrics: GatewayMetrics
    permits: Permits
    bodies: Bodies
    started_at: float = field(default_factory=time.time)
    draining: bool = False

    @property
    def limits(self) -> Limits:
        """What a request is validated against: model_limits, lowered to what the live workers serve."""
        return self.fleet.state.limits(self.model_limits)


def ctx_of(request: Request) -> GatewayContext:
    return request.app.state.ctx  # type: ignore[no-any-return]
