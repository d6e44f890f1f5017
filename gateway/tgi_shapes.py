"""TGI's response shapes: GenerateResponse and its details, stream events, timing headers.

Byte for byte what TGI writes: JSON bodies through json.dumps (Starlette's JSONResponse), stream
events through msgspec (gateway/sse.py) with Python's float repr.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any

from common.errors import GenfleetError
from common.protocol import Token, TopToken
from gateway.errors import log_if_server_error
from gateway.run import Outcome
from gateway.metrics import GatewayMetrics
from gateway.sse import encode, json_float, sse
from gateway.validation import Validated

__all__ = ["token_json", "top_json", "tgi_token_event", "details_json", "generate_body", "timing_headers",
           "stream_headers", "tgi_stream"]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# For JSON bodies (json.dumps downstream).
def token_json(t: Token) -> dict[str, Any]:
    return {"id": t.id, "text": t.text, "logprob": _finite(t.logprob), "special": t.special}


def top_json(top: list[TopToken]) -> list[dict[str, Any]]:
    return [{"id": x.id, "text": x.text, "logprob": _finite(x.logprob), "special": x.special} for x in top]


# For SSE events (`sse`, msgspec downstream).
def _stream_token_json(t: Token) -> dict[str, Any]:
    return {"id": t.id, "text": t.text, "logprob": json_float(t.logprob), "special": t.special}


def _stream_top_json(top: list[TopToken]) -> list[dict[str, Any]]:
    return [{"id": x.id, "text": x.text, "logprob": json_float(x.logprob), "special": x.special} for x in top]


def tgi_token_event(t: Token, index: int, generated_text: str | None = None,
                    details: dict[str, Any] | None = None) -> bytes:
    """TGI's stream event for token `t`, the `index`-th of its stream, with the id line `<req_id>:<seq>`.

    Every event but a stream's last has no text, no details and usually no top tokens: those are
    formatted in one step, byte for byte what `sse` writes for the same dict (tested), at a
    third of the cost. Floats are Python's repr, as json.dumps writes them.
    """
    if t.top_tokens or generated_text is not None or details is not None:
        event: dict[str, Any] = {"index": index, "token": _stream_token_json(t)}
        if t.top_tokens:
            event["top_tokens"] = _stream_top_json(t.top_tokens)
        event["generated_text"] = generated_text
        event["details"] = details
        return sse(event, f"{t.req_id}:{t.seq}")
    logprob = repr(t.logprob).encode() if math.isfinite(t.logprob) else b"null"
    return _TOKEN_EVENT % (t.req_id.encode(), t.seq, index, t.id, encode(t.text), logprob,
                           b"true" if t.special else b"false")


_TOKEN_EVENT = (b'id:%s:%d\ndata:{"index":%d,"token":{"id":%d,"text":%s,"logprob":%s,"special":%s},'
                b'"generated_text":null,"details":null}\n\n')


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


def generate_body(v: Validated, outcomes: list[Outcome]) -> tuple[dict[str, Any], Outcome]:
    """/generate's GenerateResponse: the best of the runs (highest mean logprob), the others in
    details.best_of_sequences; and the outcome the timing headers describe."""
    best = max(outcomes, key=lambda o: o.mean_logprob) if len(outcomes) > 1 else outcomes[0]
    prefix = v.input_text if v.return_full_text else ""
    body: dict[str, Any] = {"generated_text": prefix + best.text}
    if v.details:
        body["details"] = details_json(v, best, stream=False)
        others = [o for o in outcomes if o is not best]
        if others:
            body["details"]["best_of_sequences"] = [
                {"generated_text": prefix + o.text, **details_json(v, o, stream=False)} for o in others
            ]
    return body, best


def timing_headers(input_ids: list[int], input_chars: int, o: Outcome) -> dict[str, str]:
    now = time.time()
    f = o.finish
    queue_s = f.queue_time if f else 0.0
    infer_s = f.inference_time if f else 0.0
    return {
        "x-compute-type": "gpu+optimized",
        "x-compute-time": f"{now - o.started:.6f}",
        "x-compute-characters": str(input_chars),
        "x-total-time": str(int((now - o.started) * 1000)),
        "x-validation-time": str(int((o.validated_at - o.started) * 1000)),
        "x-queue-time": str(int(queue_s * 1000)),
        "x-inference-time": str(int(infer_s * 1000)),
        "x-time-per-token": str(int(infer_s * 1000 / max(1, len(o.tokens)))),
        "x-prompt-tokens": str(len(input_ids)),
        "x-generated-tokens": str(len(o.tokens)),
    }


def stream_headers(input_chars: int) -> dict[str, str]:
    return {"x-compute-type": "gpu+optimized", "x-compute-characters": str(input_chars)}


def error_event(exc: GenfleetError) -> bytes:
    return sse({"error": exc.message, "error_type": exc.error_type})


async def tgi_stream(bursts: AsyncIterator[list[Token]], v: Validated, outcome: Outcome,
                     metrics: GatewayMetrics) -> AsyncIterator[bytes]:
    """/generate_stream's events from a run's bursts; an error ends it with TGI's error event."""
    prefix = v.input_text if v.return_full_text else ""
    # Events go out one token behind the worker, so the last token's event can carry the final
    # text and details once the Finish has arrived, as TGI's last event does. Every event of a
    # burst goes out in one chunk: one write per burst, however many tokens it holds.
    # An event's index is its token's place in the whole output (seq + 1), so a resumed stream
    # (Last-Event-ID) goes on counting where the client left off.
    held: Token | None = None
    try:
        async for burst in bursts:
            chunk = []
            for token in burst:
                if held is not None:
                    chunk.append(tgi_token_event(held, held.seq + 1))
                held = token
            if chunk:
                yield b"".join(chunk)
        if held is not None:
            details = details_json(v, outcome, stream=True) if v.details else None
            yield tgi_token_event(held, held.seq + 1, prefix + outcome.text, details)
    except GenfleetError as exc:
        metrics.record_failure(exc)
        log_if_server_error(exc, "a /generate_stream event")
        last = tgi_token_event(held, held.seq + 1) if held is not None else b""
        yield last + error_event(exc)
    finally:
        await bursts.aclose()  # type: ignore[attr-defined]
