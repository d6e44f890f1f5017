"""Everything a route needs, built once in the app's lifespan and reached as `request.app.state.ctx`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import Request

from common.config import GatewayConfig
from gateway.fleet import FleetView
from gateway.lifecycle import Lifecycle
from gateway.metrics import GatewayMetrics
from gateway.models import ModelRegistry, ServedModel
from gateway.permits import Bodies, Permits
from gateway.queue_client import QueueClient
from gateway.tokenizer import Tokenizer
from gateway.validation import Limits

__all__ = ["GatewayContext", "ctx_of"]


@dataclass
class GatewayContext:
    config: GatewayConfig
    models: ModelRegistry  # the default model (--model-id) and the others the fleet serves
    queue_client: QueueClient
    metrics: GatewayMetrics
    permits: Permits
    bodies: Bodies
    started_at: float = field(default_factory=time.time)
    draining: bool = False

    # The default model's parts, for the routes and checks that concern only it.
    @property
    def default(self) -> ServedModel:
        return self.models.default

    @property
    def model_id(self) -> str:
        return self.models.default.model_id

    @property
    def tokenizer(self) -> Tokenizer:
        return self.models.default.tokenizer

    @property
    def fleet(self) -> FleetView:
        return self.models.default.fleet

    @property
    def lifecycle(self) -> Lifecycle:
        return self.models.default.lifecycle

    @property
    def limits(self) -> Limits:
        return self.models.default.limits


def ctx_of(request: Request) -> GatewayContext:
    return request.app.state.ctx  # type: ignore[no-any-return]
