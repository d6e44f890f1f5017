"""OpenAI-compatible routes: POST /v1/chat/completions, /v1/completions and /chat_tokenize.

Each choice (prompt x n) is its own fleet request; streams of several choices are interleaved
and told apart by `index`, as OpenAI does. One --max-concurrent-requests permit covers the whole
HTTP request and is held until its last chunk is written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.errors import GenfleetError
from common.protocol import Token
from gateway.context import GatewayContext, admit, ctx_of, error_response, read_json
from gateway.inbox import Inbox
from gateway.routes_generate import Outcome, record_failure, record_success, run_bursts, run_validated, timing_headers
from gateway.routes_info import VERSION
from gateway.schemas import GenerateInput
from gateway.schemas_openai import OpenAIRequest, parse_chat, parse_completion
from gateway.streaming import KEEP_ALIVE, SSEResponse, json_float, sse
from gateway.validation import Validated, validate

__all__ = ["openai_routes", "chat_completions", "completions", "chat_tokenize"]

_KEEP_ALIVE_SECONDS = 15.0
_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}
# With the space: huggingface_hub compares the whole line to "data: [DONE]"; for an SSE parser
# both spellings carry the same data.
DONE = b"data: [DONE]\n\n"


@dataclass
class _Choice:
    index: int
    validated: Validated
    seed: int | None
    outcome: Outcome


@dataclass
class _Call:
    """One parsed and validated OpenAI request, ready to run."""

    chat: bool
    req: OpenAIRequest
    choices: list[_Choice]
    response_id: str
    model: str
    created: int

    def envelope(self, **fields: Any) -> dict[str, Any]:
        obj = "chat.completion" if self.chat else "text_completion"
        if fields.pop("chunk", False) and self.chat:
            obj = "chat.completion.chunk"
        return {"id": self.response_id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": f"{VERSION}-native", **fields}

    def usage(self) -> dict[str, int]:
        # The prompt is counted once per prompt however many choices sample from it, as OpenAI does.
        prompt = sum(len(c.validated.input_ids) for c in self.choices if c.index % self.req.n == 0)
        completion = sum(len(c.outcome.tokens) for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _prepare(request: Request, ctx: GatewayContext, body: Any, chat: bool) -> _Call:
    started = time.time()
    if chat:
        req = parse_chat(body, max_n=ctx.config.max_client_batch_size)
        prompts = [ctx.tokenizer.apply_chat_template(list(req.messages or ()))]
    else:
        req = parse_completion(body, max_n=ctx.config.max_client_batch_size,
                               max_prompts=ctx.config.max_client_batch_size)
        prompts = list(req.prompts or ())
    choices = []
    for p, prompt in enumerate(prompts):
        # The chat template writes its own special tokens.
        v = validate(GenerateInput(prompt, req.parameters), ctx.config, ctx.limits, ctx.tokenizer, stream=False,
                     capacity_tokens=ctx.fleet.state.max_capacity_tokens, add_special_tokens=not chat)
        for k in range(req.n):
            seed = None
            if k and v.params.seed is not None:
                seed = (v.params.seed + k) % (1 << 63)  # distinct draws for each of the n choices
            choices.append(_Choice(p * req.n + k, v, seed, Outcome(started=started)))
    rid = request.scope.get("state", {}).get("request_id", "")
    return _Call(chat, req, choices, f"{'chatcmpl' if chat else 'cmpl'}-{rid}", req.model or ctx.model_id,
                 int(started))


def _logprobs(call: _Call, tokens: list[Token], stream: bool = False) -> dict[str, Any] | None:
    if not call.req.logprobs:
        return None
    num: Callable[[float], Any] = json_float if stream else _same  # SSE events are msgspec-encoded
    if call.chat:
        return {"content": [
            {"token": t.text, "logprob": num(t.logprob), "bytes": list(t.text.encode()),
             "top_logprobs": [{"token": x.text, "logprob": num(x.logprob), "bytes": list(x.text.encode())}
                              for x in t.top_tokens]}
            for t in tokens
        ]}
    return {"tokens": [t.text for t in tokens], "token_logprobs": [num(t.logprob) for t in tokens],
            "top_logprobs": [{x.text: num(x.logprob) for x in t.top_tokens} for t in tokens],
            "text_offset": []}


def _same(x: float) -> float:
    return x


def _text(tokens: list[Token]) -> str:
    return "".join(t.text for t in tokens if not t.special)


async def _run(ctx: GatewayContext, choice: _Choice) -> None:
    async for _ in run_validated(ctx, choice.validated, choice.outcome, seed=choice.seed):
        pass


async def _complete(ctx: GatewayContext, call: _Call) -> Response:
    await asyncio.gather(*(_run(ctx, c) for c in call.choices))
    out = []
    for c in call.choices:
        o = c.outcome
        reason = _FINISH.get(o.finish.reason if o.finish else "length", "stop")
        if call.chat:
            out.append({"index": c.index, "message": {"role": "assistant", "content": o.text},
                        "logprobs": _logprobs(call, o.tokens), "finish_reason": reason})
        else:
            out.append({"index": c.index, "text": o.text, "logprobs": _logprobs(call, o.tokens),
                        "finish_reason": reason})
        record_success(ctx, o)
    first = call.choices[0]
    return JSONResponse(call.envelope(choices=out, usage=call.usage()),
                        headers=timing_headers(ctx, first.validated, first.outcome))


def _chunk(call: _Call, index: int, tokens: list[Token], first: bool, reason: str | None) -> dict[str, Any]:
    text = _text(tokens)
    if call.chat:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if tokens or first:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": _logprobs(call, tokens, stream=True) if tokens else None,
                  "finish_reason": reason}
    else:
        choice = {"index": index, "text": text, "logprobs": _logprobs(call, tokens, stream=True) if tokens else None,
                  "finish_reason": reason}
    extra = {"usage": None} if call.req.include_usage else {}
    return call.envelope(chunk=True, choices=[choice], **extra)


async def _stream(ctx: GatewayContext, call: _Call) -> AsyncIterator[bytes]:
    # Each choice's pump hands over whole bursts (None: finished); the loop below wakes once for
    # whatever all the pumps queued and writes it as one chunk.
    inbox: Inbox[tuple[_Choice, list[Token] | None | GenfleetError]] = Inbox()

    async def pump(choice: _Choice) -> None:
        bursts = run_bursts(ctx, choice.validated, choice.outcome, seed=choice.seed)
        try:
            async for burst in bursts:
                inbox.put_nowait((choice, burst))
            inbox.put_nowait((choice, None))
        except GenfleetError as exc:
            inbox.put_nowait((choice, exc))
        finally:
            await bursts.aclose()

    tasks = [asyncio.create_task(pump(c)) for c in call.choices]
    started: set[int] = set()
    remaining = len(tasks)
    try:
        while remaining:
            if not await inbox.wait(_KEEP_ALIVE_SECONDS):
                yield KEEP_ALIVE
                continue
            chunk: list[bytes] = []
            for choice, item in inbox.drain():
                if isinstance(item, GenfleetError):
                    record_failure(ctx, item)
                    chunk.append(sse({"error": {"message": item.message, "type": item.error_type,
                                                "http_status_code": item.status_code}}))
                    yield b"".join(chunk)
                    return
                if item is not None:
                    for token in item:
                        first = choice.index not in started
                        started.add(choice.index)
                        chunk.append(sse(_chunk(call, choice.index, [token], first, None)))
                    continue
                remaining -= 1
                o = choice.outcome
                reason = _FINISH.get(o.finish.reason if o.finish else "length", "stop")
                chunk.append(sse(_chunk(call, choice.index, [], choice.index not in started, reason)))
                record_success(ctx, o)
            if chunk:
                yield b"".join(chunk)
        tail = sse(call.envelope(chunk=True, choices=[], usage=call.usage())) if call.req.include_usage else b""
        yield tail + DONE
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _openai(request: Request, chat: bool) -> Response:
    ctx = ctx_of(request)
    refused = admit(ctx)
    if refused is not None:
        return refused
    ctx.metrics.counters.inc("tgi_request_count")
    streaming = False
    try:
        body = await read_json(request, ctx.config.payload_limit)
        call = await asyncio.to_thread(_prepare, request, ctx, body, chat)  # templating and tokenizing
        if call.req.stream:
            streaming = True  # the stream releases the permit when it ends
            return SSEResponse(_stream(ctx, call), ctx.permits.release, {"x-compute-type": "gpu+optimized"})
        return await _complete(ctx, call)
    except GenfleetError as exc:
        record_failure(ctx, exc)
        return error_response(exc)
    finally:
        if not streaming:
            ctx.permits.release()


async def chat_completions(request: Request) -> Response:
    return await _openai(request, chat=True)


async def completions(request: Request) -> Response:
    return await _openai(request, chat=False)


async def chat_tokenize(request: Request) -> Response:
    ctx = ctx_of(request)
    try:
        req = parse_chat(await read_json(request, ctx.config.payload_limit), max_n=ctx.config.max_client_batch_size)
        text = ctx.tokenizer.apply_chat_template(list(req.messages or ()))
    except GenfleetError as exc:
        return error_response(exc)
    tokens = [{"id": i, "text": t, "start": a, "stop": b}
              for i, t, a, b in ctx.tokenizer.offsets(text, add_special_tokens=False)]
    return JSONResponse({"tokenize_response": tokens, "templated_text": text})


def openai_routes() -> list[Route]:
    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/chat_tokenize", chat_tokenize, methods=["POST"]),
    ]
