"""GET /health, /ping, /info, /metrics, /v1/models and POST /tokenize.

/health, /info and /tokenize concern the model the `x-model-id` header names (the default without
it), as the generation routes do; /metrics and /v1/models cover every model, and /v1/models every
LoRA adapter the fleet serves (with its model as `parent`, as vLLM lists them).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import VERSION
from gateway.admission import read_json
from gateway.context import ctx_of
from gateway.metrics import CONTENT_TYPE
from gateway.models import MODEL_HEADER
from gateway.schemas import parse_generate
from gateway.worker_metrics import worker_metrics

__all__ = ["health", "info", "metrics", "models", "tokenize"]

async def health(request: Request) -> Response:
    ctx = ctx_of(request)
    model = await ctx.models.get(request.headers.get(MODEL_HEADER))
    if model.fleet.state.healthy and not ctx.draining:
        return Response(status_code=200)
    return JSONResponse({"error": "unhealthy", "error_type": "healthcheck"}, status_code=503,
                        headers={"Retry-After": "1"})


async def info(request: Request) -> Response:
    ctx = ctx_of(request)
    model = await ctx.models.get(request.headers.get(MODEL_HEADER))
    state = model.fleet.state
    c = ctx.config
    return JSONResponse({
        "model_id": model.model_id,
        "model_sha": None,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": c.max_concurrent_requests,
        "max_best_of": c.max_best_of,
        "max_stop_sequences": c.max_stop_sequences,
        "max_input_tokens": model.limits.max_input_tokens,
        "max_total_tokens": model.limits.max_total_tokens,
        "validation_workers": 1,
        "max_client_batch_size": c.max_client_batch_size,
        "router": "genfleet-gateway",
        "version": VERSION,
        "sha": None,
        "docker_label": None,
        # TGI's launcher argument of that name: the method the live workers serve the model with.
        "quantize": next((w.quantize for w in state.serving), None),
        # TGI's launcher argument too (None when off, as TGI's /info), and how drafts are made.
        "speculate": next((w.speculate for w in state.serving if w.speculate), None),
        "speculation": next((w.speculation for w in state.serving if w.speculation), None),
        "gateway_id": ctx.queue_client.gateway_id,
        "live_workers": len(state.serving),
        "workers": [
            {"worker_id": w.worker_id, "device": w.device, "quantize": w.quantize, "speculate": w.speculate,
             "speculation": w.speculation, "adapters": w.adapters, "running": w.running, "waiting": w.waiting,
             "free_kv_tokens": w.free_kv_tokens, "capacity_tokens": w.capacity_tokens, "draining": w.draining}
            for w in state.workers
        ],
        "queue_size": state.queue_size,
        # The LoRA adapters `parameters.adapter_id` may name (every serving worker holds them).
        "lora_adapters": sorted(state.adapters),
        "models": ctx.models.live_names(),  # every model of the fleet (x-model-id picks one)
    })


async def metrics(request: Request) -> Response:
    ctx = ctx_of(request)
    m = ctx.metrics
    state = ctx.fleet.state
    m.queue_size.set(state.queue_size)
    m.batch_size.set(sum(w.running for w in state.serving))
    m.waiting.set(sum(w.waiting for w in state.serving))
    m.batch_max_total.set(sum(w.capacity_tokens for w in state.serving))
    m.kv_free.set(sum(w.free_kv_tokens for w in state.serving))
    m.live_workers.set(len(state.serving))
    m.in_flight.set(ctx.permits.used)
    m.pending.set(state.pending)
    for g in (m.worker_running, m.worker_waiting, m.worker_kv_free):
        g.clear()  # workers that left must not linger
    for level, size in state.queue_by_priority.items():
        m.queue_by_priority.labels(str(level)).set(size)
    m.model_workers.clear()
    m.model_queue_size.clear()
    for model in ctx.models.opened():
        m.model_workers.labels(model.model_id).set(len(model.fleet.state.serving))
        m.model_queue_size.labels(model.model_id).set(model.fleet.state.queue_size)
    for w in state.serving:
        m.worker_running.labels(w.worker_id).set(w.running)
        m.worker_waiting.labels(w.worker_id).set(w.waiting)
        m.worker_kv_free.labels(w.worker_id).set(w.free_kv_tokens)
    body = m.render()
    if ctx.config.merge_worker_metrics:
        body += await worker_metrics(state.serving, exclude=m.family_names)
    return Response(body, media_type=CONTENT_TYPE)


async def models(request: Request) -> Response:
    ctx = ctx_of(request)
    adapters = ctx.fleet.state.fleet_adapters
    return JSONResponse({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": name} for name in ctx.models.live_names()
    ] + [
        {"id": a, "object": "model", "created": 0, "owned_by": model, "parent": model} for a, model in sorted(adapters.items())
    ]})


async def tokenize(request: Request) -> Response:
    ctx = ctx_of(request)
    parsed = parse_generate(await read_json(request))
    model = await ctx.models.get(request.headers.get(MODEL_HEADER))
    return JSONResponse([
        {"id": tid, "text": text, "start": start, "stop": stop}
        for tid, text, start, stop in model.tokenizer.offsets(parsed.inputs)
    ])
