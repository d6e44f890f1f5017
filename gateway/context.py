"""Everything a route needs, built once in the app's lifespan and reached as `request.app.state.ctx`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from common.config import GatewayConfig
from common.errors import GenfleetError
from gateway.fleet import FleetView
from gateway.generation import Relay
from gateway.metrics import GatewayMetrics
from gateway.queue_client import QueueClient
from gateway.tokenizer import Tokenizer
from gateway.validation import Limits

__all__ = ["GatewayContext", "Permits", "admit", "error_response", "read_json", "ctx_of"]


class Permits:
    """--max-concurrent-requests: taken without waiting (429 when none is left), held to the end."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def try_acquire(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def release(self) -> None:
        self.used -= 1


@dataclass
class GatewayContext:
    config: GatewayConfig
    model_id: str
    tokenizer: Tokenizer
    model_limits: Limits  # from the settings and the model's files (common/context_length.py)
    queue_client: QueueClient
    fleet: FleetView
    relay: Relay
    metrics: GatewayMetrics
    permits: Permits
    started_at: float = field(default_factory=time.time)
    draining: bool = False

    @property
    def limits(self) -> Limits:
        """What a request is validated against: model_limits, lowered to what the live workers serve."""
        return self.fleet.state.limits(self.model_limits)

    @property
    def deadline(self) -> float:
        timeout = self.config.request_timeout
        return time.time() + timeout if timeout > 0 else 0.0


def ctx_of(request: Request) -> GatewayContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


def error_response(exc: GenfleetError, headers: dict[str, str] | None = None) -> Response:
    extra = dict(headers or {})
    if exc.status_code in (429, 503):
        extra.setdefault("Retry-After", "1")
    return JSONResponse({"error": exc.message, "error_type": exc.error_type}, status_code=exc.status_code, headers=extra)


def admit(ctx: GatewayContext) -> Response | None:
    """The draining check and the concurrency permit, shared by every generation route.

    Returns None when admitted (the caller then owns one permit and releases it when the request
    ends, stream included), or the refusal to send: 503 while draining, 429 with no permit left.
    """
    if ctx.draining:
        return error_response(GenfleetError("unavailable", "The gateway is shutting down"))
    if not ctx.permits.try_acquire():
        ctx.metrics.counters.inc("tgi_request_count")
        ctx.metrics.counters.inc("tgi_request_failure", err="overloaded")
        return error_response(GenfleetError("overloaded", "Model is overloaded"))
    return None


async def read_json(request: Request, payload_limit: int) -> Any:
    """The body as JSON; TGI's error shape (not a 500) for every way it can be wrong."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > payload_limit:
        raise GenfleetError("payload_too_large", f"Payload too large: the limit is {payload_limit} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > payload_limit:
            raise GenfleetError("payload_too_large", f"Payload too large: the limit is {payload_limit} bytes")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, a 5,000-digit number, deep nesting
        raise GenfleetError("bad_request", f"Failed to parse the request body as JSON: {exc}") from exc
