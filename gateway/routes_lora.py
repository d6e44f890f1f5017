"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter: LoRA adapters loaded or dropped at run time.

vLLM's routes and bodies (`{"lora_name", "lora_path"}`, `{"lora_name"}`), served only with
--allow-runtime-lora-updating (404 otherwise, as vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING)
and behind --api-key. The model is the `x-model-id` header's, or the body's `model`, else the
default. `lora_path` is a PEFT adapter directory on the workers' hosts (or a hub id in their
shared cache).

The gateway publishes the LoadAdapter (UnloadAdapter) on the model's control channel, which every
worker of the model hears, and waits for each serving worker's answer on its own channel (an
inbox under a reply id, like a request's). Every worker of a model reads one request stream, so
an adapter is served only once all of them hold it (gateway/fleet.py): when some refuse, those
that loaded it drop it again and the answer is a 400 with their reasons. Success is vLLM's plain
text, sent once this gateway's fleet view lists the adapter (its next request is accepted). The
model's runtime adapters are kept in Redis (id -> path), so a worker that starts later loads them
as well and the adapter stays served as the model's workers come and go.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from common.errors import GenfleetError, ValidationError
from common.protocol import Accepted, Error, Event, LoadAdapter, UnloadAdapter
from gateway.admission import read_json
from gateway.context import GatewayContext, ctx_of
from gateway.models import MODEL_HEADER, ServedModel

__all__ = ["load_lora_adapter", "unload_lora_adapter"]

_ANSWER_TIMEOUT = 60.0  # seconds the workers have to read an adapter and answer


async def load_lora_adapter(request: Request) -> Response:
    ctx, model, body = await _admin_call(request)
    name, path = _text(body, "lora_name"), _text(body, "lora_path")
    gateway_id = ctx.queue_client.gateway_id
    answers = await _ask(ctx, model, lambda reply: LoadAdapter(name, path, gateway_id, reply))
    refusals = [e.message for e in answers if isinstance(e, Error)]
    if refusals:
        if any(isinstance(e, Accepted) for e in answers):  # held by some only: a request could miss it
            await _ask(ctx, model, lambda reply: UnloadAdapter(name, gateway_id, reply))
        raise GenfleetError("adapter", f"LoRA adapter '{name}' was not loaded: {'; '.join(sorted(set(refusals)))}")
    await _record(model, name, path)
    await _until(model, lambda: name in model.fleet.state.adapters)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


async def unload_lora_adapter(request: Request) -> Response:
    ctx, model, body = await _admin_call(request)
    name = _text(body, "lora_name")
    if name not in model.fleet.state.adapters:
        raise GenfleetError("not_found", f"The lora adapter '{name}' cannot be found")
    gateway_id = ctx.queue_client.gateway_id
    answers = await _ask(ctx, model, lambda reply: UnloadAdapter(name, gateway_id, reply))
    refusals = [e.message for e in answers if isinstance(e, Error)]
    if refusals and not any(isinstance(e, Accepted) for e in answers):
        raise GenfleetError("adapter", f"LoRA adapter '{name}' was not unloaded: {'; '.join(sorted(set(refusals)))}")
    await _record(model, name, None)
    await _until(model, lambda: name not in model.fleet.state.adapters)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")


async def _admin_call(request: Request) -> tuple[GatewayContext, ServedModel, dict[str, Any]]:
    ctx = ctx_of(request)
    if not ctx.config.allow_runtime_lora_updating:
        raise GenfleetError("not_found", "Runtime LoRA updating is off: start the gateway with "
                            "--allow-runtime-lora-updating to load and unload adapters")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ValidationError("expected a JSON object with `lora_name`")
    name = request.headers.get(MODEL_HEADER) or body.get("model")
    if name is not None and not isinstance(name, str):
        raise ValidationError("`model` must be a string")
    model = await ctx.models.get(name)
    if not model.fleet.state.serving:
        raise GenfleetError("unavailable", f"No live worker serves model `{model.model_id}`")
    return ctx, model, body


def _text(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"`{field}` must be a non-empty string")
    return value


async def _ask(ctx: GatewayContext, model: ServedModel, message: Callable[[str], LoadAdapter | UnloadAdapter]) -> list[Event]:
    """Publish to every worker of the model; each serving worker's answer (Accepted or Error)."""
    qc = ctx.queue_client
    reply_id, inbox = qc.open(f"lora-{uuid.uuid4().hex}")
    expected = len(model.fleet.state.serving)
    answers: list[Event] = []
    try:
        await qc.publish_to_workers(model.model_id, message(reply_id))
        deadline = time.monotonic() + _ANSWER_TIMEOUT
        while len(answers) < expected:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GenfleetError("unavailable", f"{expected - len(answers)} of the {expected} workers of "
                                    f"`{model.model_id}` did not answer within {_ANSWER_TIMEOUT:.0f}s")
            await inbox.wait(left)
            answers += [e for e in inbox.drain() if isinstance(e, (Accepted, Error))]
    finally:
        qc.close(reply_id)
    return answers


async def _record(model: ServedModel, name: str, path: str | None) -> None:
    """The model's runtime adapters in Redis (common/streams.py), which workers that start later load."""
    key = model.fleet.keys.runtime_adapters(model.model_id)
    try:
        if path is None:
            await model.fleet.client.hdel(key, name)
        else:
            await model.fleet.client.hset(key, name, path)
    except RedisError as exc:
        raise GenfleetError("unavailable", f"the workers answered, but Redis did not record it: {exc}") from exc


async def _until(model: ServedModel, done: Callable[[], bool]) -> None:
    # The workers heart-beat before they answer: one refresh of the view normally shows the change.
    deadline = time.monotonic() + _ANSWER_TIMEOUT
    await model.fleet.refresh()
    while not done():
        if time.monotonic() > deadline:
            raise GenfleetError("unavailable", "the workers answered, but their heartbeats do not show the change")
        await asyncio.sleep(0.05)
        await model.fleet.refresh()
