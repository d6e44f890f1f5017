"""TGI's generation routes: POST /generate, /generate_stream and / (compat); `x-model-id` picks the model."""

from __future__ import annotations

import functools

from starlette.responses import JSONResponse, Response

from gateway.admission import Admission, admitted
from gateway.lifecycle import Run
from gateway.models import MODEL_HEADER, ServedModel
from gateway.responses import DeferredResponse
from gateway.schemas import GenerateInput, parse_generate
from gateway.sse import SSEResponse
from gateway.tgi_shapes import generate_body, stream_headers, tgi_stream, timing_headers
from gateway.validation import Validated, off_loop, validate

__all__ = ["generate", "generate_stream", "compat_generate"]


@admitted
async def generate(call: Admission) -> Response:
    return await _generate(call, parse_generate(call.body), as_list=False)


@admitted
async def generate_stream(call: Admission) -> Response:
    return await _stream(call, parse_generate(call.body))


@admitted
async def compat_generate(call: Admission) -> Response:
    """POST /: GenerateRequest plus `stream`; a JSON array when not streaming (as TGI)."""
    parsed = parse_generate(call.body)
    if parsed.stream:
        return await _stream(call, parsed)
    return await _generate(call, parsed, as_list=True)


async def _validated(call: Admission, parsed: GenerateInput, *, stream: bool) -> tuple[ServedModel, Validated]:
    model = await call.ctx.models.get(call.request.headers.get(MODEL_HEADER))
    check = functools.partial(validate, parsed, call.ctx.config, model.limits, model.tokenizer, stream=stream,
                              capacity_tokens=model.fleet.state.max_capacity_tokens)
    return model, await off_loop(check, call.body_size)


async def _generate(call: Admission, parsed: GenerateInput, *, as_list: bool) -> Response:
    model, v = await _validated(call, parsed, stream=False)
    runs = Run.fan_out(v.input_ids, v.run_params, call.started, v.priority)

    async def produce() -> Response:
        await model.lifecycle.complete(runs)
        body, best = generate_body(v, [r.outcome for r in runs])
        headers = timing_headers(v.input_ids, len(v.input_text), best)
        return JSONResponse([body] if as_list else body, headers=headers)

    return DeferredResponse(produce)


async def _stream(call: Admission, parsed: GenerateInput) -> Response:
    # TGI answers stream errors inside a 200 SSE stream; a refusal before the stream starts keeps
    # its status here so that load balancers and clients can back off (documented in docs/api.md).
    model, v = await _validated(call, parsed, stream=True)
    (run,) = Run.fan_out(v.input_ids, v.run_params, call.started, v.priority)
    run.resume = call.resume_point()
    await model.lifecycle.prepare(run)
    events = tgi_stream(model.lifecycle.run(run), v, run.outcome, call.ctx.metrics)
    return SSEResponse(events, stream_headers(len(v.input_text)))
