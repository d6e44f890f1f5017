"""OpenAI-compatible routes: POST /v1/chat/completions, /v1/completions and /chat_tokenize.

The request's `model` picks the served model (gateway/models.py). One --max-concurrent-requests permit covers the whole HTTP request, however many choices it
fans out to, and is held until its last chunk is written.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.admission import Admission, admitted, read_json
from gateway.context import ctx_of
from gateway.run import Run
from gateway.models import ServedModel
from gateway.openai_shapes import OpenAICall, completion_body, openai_stream
from gateway.responses import DeferredResponse
from gateway.schemas import GenerateInput
from gateway.schemas_openai import OpenAIRequest, parse_chat, parse_completion
from gateway.sse import SSEResponse
from gateway.tools import render_prompt
from gateway.tgi_shapes import timing_headers
from common.errors import ValidationError
from gateway.validation import off_loop, validate

__all__ = ["openai_routes"]


def _parse(call: Admission, chat: bool) -> OpenAIRequest:
    limit = call.ctx.config.max_client_batch_size
    return parse_chat(call.body, max_n=limit) if chat else parse_completion(call.body, max_n=limit, max_prompts=limit)


def _prepare(call: Admission, chat: bool, req: OpenAIRequest, model: ServedModel, adapter_id: str) -> OpenAICall:
    """Template, tokenize and validate every prompt; one Run per choice (prompt x n)."""
    ctx = call.ctx
    prompts = [render_prompt(model.tokenizer, list(req.messages or ()), req.tools)] if chat else list(req.prompts or ())
    choices: list[Run] = []
    prompt_tokens = 0
    for prompt in prompts:
        # The chat template writes its own special tokens.
        v = validate(GenerateInput(prompt, req.parameters), ctx.config, model.limits, model.tokenizer, stream=False,
                     capacity_tokens=model.fleet.state.max_capacity_tokens, add_special_tokens=not chat, fan_out=req.n)
        choices += Run.fan_out(v.input_ids, v.run_params[: req.n], call.started, v.priority, adapter_id)
        prompt_tokens += len(v.input_ids)
    return OpenAICall(chat, req, choices, prompt_tokens, sum(len(p) for p in prompts),
                      f"{'chatcmpl' if chat else 'cmpl'}-{call.request_id}", req.model or model.model_id, int(call.started))


async def _openai(call: Admission, chat: bool) -> Response:
    req = await off_loop(lambda: _parse(call, chat), call.body_size)
    model, adapter_id = await call.ctx.models.resolve(req.model)
    oc = await off_loop(lambda: _prepare(call, chat, req, model, adapter_id), call.body_size)
    lifecycle = model.lifecycle
    if oc.req.stream:
        resume = call.resume_point()
        if resume is not None:
            if len(oc.choices) > 1:
                raise ValidationError("`Last-Event-ID` resumes a stream of one choice (one prompt, n = 1)")
            oc.choices[0].resume = resume
            await lifecycle.prepare(oc.choices[0])
        headers = call.request.headers
        oc.event_ids = "idempotency-key" in headers or resume is not None
        return SSEResponse(openai_stream(lifecycle.interleave(oc.choices), oc, call.ctx.metrics),
                           {"x-compute-type": "gpu+optimized"})

    async def produce() -> Response:
        await lifecycle.complete(oc.choices)
        first = oc.choices[0]
        return JSONResponse(completion_body(oc), headers=timing_headers(first.input_ids, oc.input_chars, first.outcome))

    return DeferredResponse(produce)


@admitted
async def chat_completions(call: Admission) -> Response:
    return await _openai(call, chat=True)


@admitted
async def completions(call: Admission) -> Response:
    return await _openai(call, chat=False)


async def chat_tokenize(request: Request) -> Response:
    ctx = ctx_of(request)
    req = parse_chat(await read_json(request), max_n=ctx.config.max_client_batch_size)
    tokenizer = (await ctx.models.resolve(req.model))[0].tokenizer
    text = render_prompt(tokenizer, list(req.messages or ()), req.tools)
    tokens = [{"id": i, "text": t, "start": a, "stop": b}
              for i, t, a, b in tokenizer.offsets(text, add_special_tokens=False)]
    return JSONResponse({"tokenize_response": tokens, "templated_text": text})


def openai_routes() -> list[Route]:
    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/chat_tokenize", chat_tokenize, methods=["POST"]),
    ]
