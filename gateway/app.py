"""Build the Starlette app: routes, pure-ASGI middleware, exception handlers, and the lifespan
that owns Redis and the served models (tokenizer, fleet view and request lifecycle of each)."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from common.config import GatewayConfig
from common.context_length import context_length, max_total_tokens
from common.gc_settings import settle_gc
from common.model_source import ModelNotFound, resolve_model
from common.redis_clients import async_client
from common.streams import Keys
from gateway.permits import Bodies, Permits
from gateway.context import GatewayContext
from gateway.docs_page import docs_routes
from gateway.errors import EXCEPTION_HANDLERS
from gateway.fleet import FleetView
from gateway.lifecycle import Lifecycle
from gateway.metrics import GatewayMetrics
from gateway.models import ModelRegistry, ServedModel
from gateway.middleware import ApiKeyMiddleware, RequestIdMiddleware, api_key_scope
from gateway.queue_client import QueueClient
from gateway.openapi import openapi_json
from gateway.routes_cancel import cancel
from gateway.routes_generate import compat_generate, generate, generate_stream, stream_by_id
from gateway.routes_info import health, info, metrics, models, tokenize
from gateway.routes_lora import load_lora_adapter, unload_lora_adapter
from gateway.routes_openai import openai_routes
from gateway.routes_watermark import watermark_detect
from gateway.tokenizer import Tokenizer, TokenizerFilesMissing
from gateway.validation import Limits

__all__ = ["build_app"]

log = logging.getLogger("genfleet.gateway")


def build_app(config: GatewayConfig, gateway_id: str | None = None) -> Starlette:
    gid = gateway_id or config.gateway_id or f"gw-{uuid.uuid4().hex[:10]}"

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ctx = _context(config, gid)
        app.state.ctx = ctx
        await ctx.queue_client.start()
        await ctx.fleet.start()
        settle_gc()  # the tokenizer and the modules are loaded: the events of many streams follow
        log.info("gateway %s serving %s (max input %d, max total %d)", gid, ctx.model_id,
                 ctx.limits.max_input_tokens, ctx.limits.max_total_tokens)
        try:
            yield
        finally:
            await ctx.models.stop()
            await ctx.queue_client.stop()
            await ctx.fleet.client.aclose()

    routes = [
        Route("/", compat_generate, methods=["POST"]),
        Route("/generate", generate, methods=["POST"]),
        Route("/generate_stream", generate_stream, methods=["POST"]),
        Route("/generate_stream/{request_id}", stream_by_id, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/cancel/{request_id}", cancel, methods=["POST"]),
        Route("/watermark/detect", watermark_detect, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/ping", health, methods=["GET"]),
        Route("/", health, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/load_lora_adapter", load_lora_adapter, methods=["POST"]),
        Route("/v1/unload_lora_adapter", unload_lora_adapter, methods=["POST"]),
        *openai_routes(),
        Route("/api-doc/openapi.json", openapi_json, methods=["GET"]),
        *docs_routes(),
    ]
    middleware = [Middleware(RequestIdMiddleware)]
    origins = [o.strip() for o in (config.cors_allow_origin or "*").split(",") if o.strip()]
    middleware.append(Middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                                 allow_headers=["content-type", "authorization", "last-event-id"]))
    if config.api_key:
        middleware.append(Middleware(ApiKeyMiddleware, api_key=config.api_key))
    return Starlette(routes=routes, middleware=middleware, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)


def _context(config: GatewayConfig, gid: str) -> GatewayContext:
    fleet_cfg = config.fleet
    # NOTE: redis-py's pool refuses past 100 connections by default; every in-flight request
    # may hold one at a time (XADD, cancel), plus the subscription, heartbeat and fleet views.
    client = async_client(fleet_cfg.effective_redis_url, fleet_cfg.redis_cluster, socket_timeout=5,
                          socket_connect_timeout=3, health_check_interval=10,
                          max_connections=config.max_concurrent_requests + 32)
    keys = Keys(fleet_cfg.key_prefix, fleet_cfg.stream_partitions)
    queue_client = QueueClient(client, keys, gid, config.max_queue_length, fleet_cfg.resume_ttl)
    permits = Permits(config.max_concurrent_requests)

    def model_files(model_id: str, default: bool) -> tuple[Tokenizer, Limits]:
        model_dir = resolve_model(model_id, model_cache=fleet_cfg.model_cache,
                                  revision=fleet_cfg.revision if default else None, weights=False)
        # --chat-template is the default model's; every other model has its own files.
        tokenizer = Tokenizer(model_dir, config.chat_template if default else None)
        max_total = max_total_tokens(context_length(model_dir), fleet_cfg.max_total_tokens)
        return tokenizer, Limits(fleet_cfg.max_input_tokens or max_total - 1, max_total)

    def served(model_id: str, tokenizer: Tokenizer, limits: Limits, default: bool) -> ServedModel:
        fleet = FleetView(client, keys, model_id, gid, fleet_cfg.heartbeat_interval, fleet_cfg.heartbeat_ttl,
                          in_flight=lambda: permits.used, publishes_heartbeat=default)
        lifecycle = Lifecycle(queue_client, fleet, metrics, model_id, config.request_timeout,
                              scope=api_key_scope(config.api_key))
        return ServedModel(model_id, tokenizer, limits, fleet, lifecycle)

    try:
        tokenizer, limits = model_files(fleet_cfg.model_id, default=True)
    except (ModelNotFound, TokenizerFilesMissing) as exc:
        log.error("cannot start: %s", exc)
        raise
    metrics = GatewayMetrics(limits.max_input_tokens, limits.max_total_tokens)
    registry = ModelRegistry(served(fleet_cfg.model_id, tokenizer, limits, default=True),
                             lambda name: served(name, *model_files(name, default=False), default=False))
    return GatewayContext(config=config, models=registry, queue_client=queue_client, metrics=metrics,
                          permits=permits,
                          bodies=Bodies(config.max_unfinished_bodies, config.body_read_timeout, config.payload_limit))
