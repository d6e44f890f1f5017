"""Build the Starlette app: routes, pure-ASGI middleware, and the lifespan that owns Redis."""

from __future__ import annotations

import contextlib
import gc
import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from common.config import GatewayConfig
from common.context_length import context_length, max_total_tokens
from common.log import bind_request_id
from common.model_source import ModelNotFound, resolve_model
from common.streams import Keys
from gateway.context import GatewayContext, Permits
from gateway.fleet import FleetView
from gateway.generation import Relay
from gateway.metrics import GatewayMetrics
from gateway.queue_client import QueueClient
from gateway.routes_generate import compat_generate, generate, generate_stream
from gateway.docs_page import docs_routes
from gateway.openapi import openapi_json
from gateway.routes_info import health, info, metrics, models, tokenize
from gateway.routes_openai import openai_routes
from gateway.tokenizer import Tokenizer, TokenizerFilesMissing
from gateway.validation import Limits

__all__ = ["build_app", "GENERATION_PATHS"]

log = logging.getLogger("genfleet.gateway")

# Routes behind --api-key (TGI protects the generation routes only).
GENERATION_PATHS = frozenset({"/", "/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions",
                              "/tokenize", "/chat_tokenize", "/invocations"})


class ApiKeyMiddleware:
    """Bearer auth, compared in constant time; a bare 401 without a body, as TGI answers."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"bearer {api_key}".lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in GENERATION_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"").lower()
            if not hmac.compare_digest(given, self.expected):
                await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


class RequestIdMiddleware:
    """Names every response's request id (x-request-id), echoing the client's when it sent one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = dict(scope["headers"]).get(b"x-request-id") or uuid.uuid4().hex.encode()
        request_id = rid.decode(errors="replace")[:128]
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        # Log lines of this request carry its id; the id also names the request on the wire,
        # so the worker's log lines about it match (gateway/queue_client.py).
        with bind_request_id(request_id):
            await self.app(scope, receive, send_with_id)


def build_app(config: GatewayConfig, gateway_id: str | None = None) -> Starlette:
    fleet_cfg = config.fleet
    gid = gateway_id or config.gateway_id or f"gw-{uuid.uuid4().hex[:10]}"

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            model_dir = resolve_model(fleet_cfg.model_id, model_cache=fleet_cfg.model_cache,
                                      revision=fleet_cfg.revision, weights=False)
            tokenizer = Tokenizer(model_dir, config.chat_template)
        except (ModelNotFound, TokenizerFilesMissing) as exc:
            log.error("cannot start: %s", exc)
            raise
        max_total = max_total_tokens(context_length(model_dir), fleet_cfg.max_total_tokens)
        max_input = fleet_cfg.max_input_tokens or max_total - 1
        # NOTE: redis-py's pool refuses past 100 connections by default; every in-flight request
        # may hold one at a time (XADD, cancel), plus the subscription, heartbeat and fleet view.
        client = aioredis.Redis.from_url(fleet_cfg.effective_redis_url, socket_timeout=5, socket_connect_timeout=3,
                                         health_check_interval=10, max_connections=config.max_concurrent_requests + 32)
        keys = Keys(fleet_cfg.key_prefix)
        queue_client = QueueClient(client, keys, gid, config.max_queue_length)
        gateway_metrics = GatewayMetrics(max_input, max_total)
        permits = Permits(config.max_concurrent_requests)
        fleet = FleetView(client, keys, fleet_cfg.model_id, gid, fleet_cfg.heartbeat_interval,
                          fleet_cfg.heartbeat_ttl, in_flight=lambda: permits.used)
        app.state.ctx = GatewayContext(
            config=config, model_id=fleet_cfg.model_id, tokenizer=tokenizer,
            model_limits=Limits(max_input, max_total), queue_client=queue_client, fleet=fleet,
            relay=Relay(queue_client, fleet, gateway_metrics), metrics=gateway_metrics, permits=permits,
        )
        await queue_client.start()
        await fleet.start()
        # What is loaded by now (the tokenizer, the modules) lives as long as the
        # process. Frozen, the cyclic collector stops walking it on every full collection, which
        # the events of hundreds of streams (tens of thousands of objects a second) trigger often.
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)  # young collections 30x rarer than the default 700
        log.info("gateway %s serving %s (max input %d, max total %d)", gid, fleet_cfg.model_id, max_input, max_total)
        try:
            yield
        finally:
            await fleet.stop()
            await queue_client.stop()
            await client.aclose()

    routes = [
        Route("/", compat_generate, methods=["POST"]),
        Route("/generate", generate, methods=["POST"]),
        Route("/generate_stream", generate_stream, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/ping", health, methods=["GET"]),
        Route("/", health, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
    ]
    routes += openai_routes()
    routes += [
        Route("/api-doc/openapi.json", openapi_json, methods=["GET"]),
        *docs_routes(),
    ]
    middleware = [Middleware(RequestIdMiddleware)]
    origins = [o.strip() for o in (config.cors_allow_origin or "*").split(",") if o.strip()]
    middleware.append(Middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                                 allow_headers=["content-type", "authorization"]))
    if config.api_key:
        middleware.append(Middleware(ApiKeyMiddleware, api_key=config.api_key))
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
