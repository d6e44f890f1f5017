"""TGI's generation routes: POST /generate, /generate_stream and / (compat); `x-model-id` picks the
model. GET /generate_stream/{request_id} re-opens a stream by its id (a browser's EventSource)."""

from __future__ import annotations

import functools

from starlette.responses import JSONResponse, Response

from common.errors import GenfleetError

from gateway.admission import Admission, admitted
from gateway.run import Outcome, Run
from gateway.middleware import check_request_id
from gateway.models import MODEL_HEADER, ServedModel
from gateway.responses import DeferredResponse
from gateway.resume import check_ended, claimed
from gateway.schemas import GenerateInput, parse_generate
from gateway.sse import SSEResponse
from gateway.tgi_shapes import generate_body, stream_headers, tgi_stream, timing_headers
from gateway.validation import Validated, off_loop, validate

__all__ = ["generate", "generate_stream", "compat_generate", "stream_by_id"]


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
    if parsed.parameters.adapter_id:
        model.check_adapter(parsed.parameters.adapter_id)
    check = functools.partial(validate, parsed, call.ctx.config, model.limits, model.tokenizer, stream=stream,
                              capacity_tokens=model.fleet.state.max_capacity_tokens)
    return model, await off_loop(check, call.body_size)


async def _generate(call: Admission, parsed: GenerateInput, *, as_list: bool) -> Response:
    model, v = await _validated(call, parsed, stream=False)
    runs = Run.fan_out(v.input_ids, v.run_params, call.started, v.priority, parsed.parameters.adapter_id or "")

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
    (run,) = Run.fan_out(v.input_ids, v.run_params, call.started, v.priority, parsed.parameters.adapter_id or "")
    run.resume = call.resume_point()
    await model.lifecycle.prepare(run)
    events = tgi_stream(model.lifecycle.run(run), v, run.outcome, call.ctx.metrics)
    return SSEResponse(events, stream_headers(len(v.input_text)))


@admitted
async def stream_by_id(call: Admission) -> Response:
    """GET /generate_stream/{request_id}: the token events of a request already submitted (by any
    route, through any gateway), from its first token or after the seq its `Last-Event-ID` names,
    then live to its end: what a browser's EventSource opens, and re-opens by itself with the
    `Last-Event-ID` header when the connection breaks. The events are /generate_stream's, the last
    one with `details` and the generated text without the prompt (the body that said otherwise is
    not sent again). 204 once there is nothing more to send (EventSource then stops reconnecting);
    a request cancelled or failed answers its error as the status (EventSource stops too)."""
    req_id = call.request.path_params["request_id"]
    check_request_id(req_id, "request_id")
    after = call.resume_after(req_id)
    first = await claimed(call.ctx.queue_client, req_id)
    model = await call.ctx.models.get(first.model)
    run = Run(first.input_ids, first.params, Outcome(started=call.started), resume=(req_id, after),
              priority=first.priority, adapter_id=first.adapter_id)
    await model.lifecycle.prepare(run)
    replay = run.replay
    if replay is None:
        raise GenfleetError("unavailable", "Request queue unavailable: Redis does not answer")
    if replay.ended and after + 1 >= len(replay.tokens):
        check_ended(replay)
        return Response(status_code=204)
    v = Validated(first.input_ids, (first.params,), return_full_text=False, details=True,
                  decoder_input_details=False, input_text="", priority=first.priority)
    return SSEResponse(tgi_stream(model.lifecycle.run(run), v, run.outcome, call.ctx.metrics), stream_headers(0))
