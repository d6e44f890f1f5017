"""TGI's generation routes: POST /generate, /generate_stream and / (compat)."""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from common.errors import GenfleetError
from common.protocol import Finish, Token
from gateway.context import GatewayContext, admit, ctx_of, error_response, read_json
from gateway.schemas import GenerateInput, parse_generate
from gateway.streaming import KEEP_ALIVE, SSEResponse, sse, tgi_token_event, token_json, top_json
from gateway.validation import Validated, validate

__all__ = ["generate", "generate_stream", "compat_generate", "Outcome", "run_bursts", "run_validated", "prepare",
           "record_success", "record_failure", "timing_headers"]

_KEEP_ALIVE_SECONDS = 15.0
# Prompts up to this many characters are tokenized on the event loop (~0.2 ms at most): a hop to a
# thread costs more than that once the loop is busy, since each side then waits for the GIL.
_INLINE_PROMPT_CHARS = 500


@dataclass
class Outcome:
    """Everything one finished generation produced."""

    tokens: list[Token] = field(default_factory=list)
    finish: Finish | None = None
    started: float = field(default_factory=time.time)
    validated_at: float = 0.0
    first_token_at: float = 0.0

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens if not t.special)

    @property
    def mean_logprob(self) -> float:
        return sum(t.logprob for t in self.tokens) / max(1, len(self.tokens))


async def prepare(request: Request, ctx: GatewayContext, *, stream: bool | None = None) -> tuple[GenerateInput, Validated]:
    ctx.metrics.counters.inc("tgi_request_count")
    body = await read_json(request, ctx.config.payload_limit)
    parsed = parse_generate(body)
    is_stream = parsed.stream if stream is None else stream
    check = functools.partial(validate, parsed, ctx.config, ctx.limits, ctx.tokenizer, stream=is_stream,
                              capacity_tokens=ctx.fleet.state.max_capacity_tokens)
    if len(parsed.inputs) <= _INLINE_PROMPT_CHARS:
        return parsed, check()
    # Tokenizing a long prompt takes milliseconds: off the event loop, so open streams keep flowing.
    return parsed, await asyncio.to_thread(check)


async def run_bursts(ctx: GatewayContext, v: Validated, outcome: Outcome, *, seed: int | None = None,
                     keep_alive: float = 0.0) -> AsyncIterator[list[Token]]:
    """Queue one generation and yield its tokens a burst at a time (see Relay.run; an empty burst
    is `keep_alive` seconds of silence); `outcome` collects them and the finish."""
    if not ctx.fleet.state.redis_ok:
        raise GenfleetError("unavailable", "Request queue unavailable: Redis does not answer")
    params = v.params
    if seed is not None:
        params = msgspec.structs.replace(params, seed=seed)
    state = ctx.queue_client.new_state(ctx.model_id, v.input_ids, params, ctx.deadline)
    outcome.validated_at = time.time()
    metrics = ctx.metrics
    metrics.validation.observe(outcome.validated_at - outcome.started)
    metrics.input_length.observe(len(v.input_ids))
    metrics.max_new.observe(params.max_new_tokens)
    await ctx.relay.submit(state)
    last_token_at = 0.0
    try:
        async for burst in ctx.relay.run(state, keep_alive):
            if burst:
                # Tokens of one burst arrived together: the first carries the gap, the rest 0.
                now = time.time()
                if not outcome.tokens:
                    outcome.first_token_at = now
                    metrics.ttft.observe(now - outcome.started)
                else:
                    metrics.itl.observe(now - last_token_at)
                if len(burst) > 1:
                    metrics.itl.observe(0.0, len(burst) - 1)
                last_token_at = now
                outcome.tokens += burst
            yield burst
        outcome.finish = state.finish
        ctx.queue_client.finish(state)
    finally:
        if not state.done:
            await ctx.queue_client.cancel(state)


async def run_validated(ctx: GatewayContext, v: Validated, outcome: Outcome, *, seed: int | None = None) -> AsyncIterator[Token]:
    """Queue one generation and yield its tokens one by one; `outcome` collects them and the finish."""
    bursts = run_bursts(ctx, v, outcome, seed=seed)
    try:
        async for burst in bursts:
            for token in burst:
                yield token
    finally:
        await bursts.aclose()  # a consumer that stops early cancels the request now, not at GC


def record_success(ctx: GatewayContext, o: Outcome) -> None:
    now = time.time()
    f = o.finish
    ctx.metrics.counters.inc("tgi_request_success")
    ctx.metrics.duration.observe(now - o.started)
    ctx.metrics.generated.observe(len(o.tokens))
    if f is not None:
        ctx.metrics.queue.observe(f.queue_time)
        ctx.metrics.inference.observe(f.inference_time)
        ctx.metrics.per_token.observe(f.inference_time / max(1, len(o.tokens)))


def record_failure(ctx: GatewayContext, exc: GenfleetError) -> None:
    kind = {"validation": "validation", "template_error": "template", "overloaded": "overloaded",
            "bad_request": "validation", "payload_too_large": "validation"}.get(exc.error_type, "generation")
    ctx.metrics.counters.inc("tgi_request_failure", err=kind)


def details_json(v: Validated, o: Outcome, *, stream: bool) -> dict[str, Any]:
    f = o.finish
    out: dict[str, Any] = {
        "finish_reason": f.reason if f else "length",
        "generated_tokens": len(o.tokens),
        "seed": f.seed if f else None,
    }
    if stream:
        out["input_length"] = len(v.input_ids)
        return out
    out["prefill"] = [
        {"id": p.id, "text": p.text, "logprob": None if p.logprob != p.logprob else p.logprob} for p in (f.prefill if f else [])
    ] if v.decoder_input_details else []
    out["tokens"] = [token_json(t) for t in o.tokens]
    if any(t.top_tokens for t in o.tokens):
        out["top_tokens"] = [top_json(t.top_tokens) for t in o.tokens]
    return out


def timing_headers(ctx: GatewayContext, v: Validated, o: Outcome) -> dict[str, str]:
    now = time.time()
    f = o.finish
    queue_s = f.queue_time if f else 0.0
    infer_s = f.inference_time if f else 0.0
    return {
        "x-compute-type": "gpu+optimized",
        "x-compute-time": f"{now - o.started:.6f}",
        "x-compute-characters": str(len(v.input_text)),
        "x-total-time": str(int((now - o.started) * 1000)),
        "x-validation-time": str(int((o.validated_at - o.started) * 1000)),
        "x-queue-time": str(int(queue_s * 1000)),
        "x-inference-time": str(int(infer_s * 1000)),
        "x-time-per-token": str(int(infer_s * 1000 / max(1, len(o.tokens)))),
        "x-prompt-tokens": str(len(v.input_ids)),
        "x-generated-tokens": str(len(o.tokens)),
    }


async def _generate_one(request: Request, ctx: GatewayContext) -> tuple[dict[str, Any], dict[str, str]]:
    started = time.time()
    parsed, v = await prepare(request, ctx, stream=False)
    runs = v.best_of
    outcomes = [Outcome(started=started) for _ in range(runs)]

    async def one(o: Outcome) -> None:
        async for _ in run_validated(ctx, v, o, seed=None if runs == 1 else _fresh_seed()):
            pass

    await asyncio.gather(*(one(o) for o in outcomes))
    best = max(outcomes, key=lambda o: o.mean_logprob) if runs > 1 else outcomes[0]
    prefix = v.input_text if v.return_full_text else ""
    body: dict[str, Any] = {"generated_text": prefix + best.text}
    if v.details:
        body["details"] = details_json(v, best, stream=False)
        others = [o for o in outcomes if o is not best]
        if others:
            body["details"]["best_of_sequences"] = [
                {"generated_text": prefix + o.text, **details_json(v, o, stream=False)} for o in others
            ]
    for o in outcomes:
        record_success(ctx, o)
    return body, timing_headers(ctx, v, best)


async def _guarded(request: Request, fn: Any) -> Response:
    ctx = ctx_of(request)
    refused = admit(ctx)
    if refused is not None:
        return refused
    try:
        return await fn(request, ctx)  # type: ignore[no-any-return]
    except GenfleetError as exc:
        record_failure(ctx, exc)
        return error_response(exc)
    finally:
        ctx.permits.release()


async def generate(request: Request) -> Response:
    async def handle(request: Request, ctx: GatewayContext) -> Response:
        body, headers = await _generate_one(request, ctx)
        return JSONResponse(body, headers=headers)

    return await _guarded(request, handle)


async def compat_generate(request: Request) -> Response:
    """POST /: GenerateRequest plus `stream`; a JSON array when not streaming (as TGI)."""
    ctx = ctx_of(request)
    raw = await request.body()
    try:
        wants_stream = bool(json.loads(raw).get("stream", False))
    except (ValueError, AttributeError, RecursionError):  # the real parse reports it
        wants_stream = False

    original_receive = request.receive
    replayed = False

    async def replay() -> dict[str, Any]:
        # The body once, then the real channel (so disconnects are still seen while streaming).
        nonlocal replayed
        if replayed:
            return await original_receive()  # type: ignore[no-any-return]
        replayed = True
        return {"type": "http.request", "body": raw, "more_body": False}

    request = Request(request.scope, replay)
    if wants_stream:
        return await generate_stream(request)

    async def handle(request: Request, ctx: GatewayContext) -> Response:
        body, headers = await _generate_one(request, ctx)
        return JSONResponse([body], headers=headers)

    del ctx
    return await _guarded(request, handle)


async def generate_stream(request: Request) -> Response:
    ctx = ctx_of(request)
    # TGI answers stream errors inside a 200 SSE stream; a refusal keeps its 429/503 status here
    # so that load balancers and clients can back off (documented in docs/api.md).
    refused = admit(ctx)
    if refused is not None:
        return refused
    started = time.time()
    try:
        parsed, v = await prepare(request, ctx, stream=True)
    except GenfleetError as exc:
        ctx.permits.release()
        record_failure(ctx, exc)
        return error_response(exc)
    outcome = Outcome(started=started)
    headers = {"x-compute-type": "gpu+optimized", "x-compute-characters": str(len(v.input_text))}
    return SSEResponse(_stream(request, ctx, v, outcome), ctx.permits.release, headers)


async def _stream(request: Request, ctx: GatewayContext, v: Validated, outcome: Outcome) -> AsyncIterator[bytes]:
    prefix = v.input_text if v.return_full_text else ""
    bursts = run_bursts(ctx, v, outcome, keep_alive=_KEEP_ALIVE_SECONDS)
    # Events go out one token behind the worker, so the last token's event can carry the final
    # text and details once the Finish has arrived, as TGI's last event does. Every event of a
    # burst goes out in one chunk: one write per burst, however many tokens it holds.
    held: Token | None = None
    index = 0  # of the held token's event
    try:
        async for burst in bursts:
            if not burst:
                yield KEEP_ALIVE
                continue
            chunk = []
            for token in burst:
                if held is not None:
                    chunk.append(tgi_token_event(held, index))
                held = token
                index += 1
            if chunk:
                yield b"".join(chunk)
        if held is not None:
            details = details_json(v, outcome, stream=True) if v.details else None
            yield tgi_token_event(held, index, prefix + outcome.text, details)
        record_success(ctx, outcome)
    except GenfleetError as exc:
        record_failure(ctx, exc)
        last = tgi_token_event(held, index) if held is not None else b""
        yield last + sse({"error": exc.message, "error_type": exc.error_type})
    finally:
        await bursts.aclose()


def _fresh_seed() -> int:
    return random.getrandbits(63)
