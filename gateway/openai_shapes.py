"""OpenAI's response shapes: completion envelopes, stream chunks, logprobs, usage, [DONE].

Each choice (prompt x n) is its own fleet request (a `Run`); the streams of several choices are
interleaved and told apart by `index`, as OpenAI does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from common.errors import GenfleetError
from common.protocol import Token
from gateway import VERSION
from gateway.errors import log_if_server_error
from gateway.run import Run
from gateway.metrics import GatewayMetrics
from gateway.schemas_openai import OpenAIRequest
from gateway.sse import DONE, json_float, openai_sse
from gateway.tool_calls import ToolCallReader

__all__ = ["OpenAICall", "completion_body", "openai_stream", "finish_reason"]

_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length", "cancelled": "cancelled"}
_TOOL_CALLS = "tool_calls"  # OpenAI's finish reason of an answer that calls tools


@dataclass
class OpenAICall:
    """One parsed and validated OpenAI request: its choices, ready to run."""

    chat: bool
    req: OpenAIRequest
    choices: list[Run]  # choice index = position
    prompt_tokens: int  # each prompt counted once however many choices sample from it, as OpenAI does
    input_chars: int  # of every prompt, templated (x-compute-characters)
    response_id: str
    model: str
    created: int = 0
    # `id:` lines (<request id>:<seq>) on token chunks: only for a client that asked for a
    # resumable stream (Idempotency-Key or Last-Event-ID), since clients that read every line
    # after "data: " as JSON (vLLM's benchmark) choke on them. One chunk per token either way.
    event_ids: bool = False

    def __post_init__(self) -> None:
        self.created = self.created or int(time.time())

    def envelope(self, *, chunk: bool = False, **fields: Any) -> dict[str, Any]:
        obj = "chat.completion" if self.chat else "text_completion"
        if chunk and self.chat:
            obj = "chat.completion.chunk"
        return {"id": self.response_id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": f"{VERSION}-native", **fields}

    def usage(self) -> dict[str, int]:
        completion = sum(len(c.outcome.tokens) for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def finish_reason(run: Run) -> str:
    f = run.outcome.finish
    return _FINISH.get(f.reason if f else "length", "stop")


def _logprobs(call: OpenAICall, tokens: list[Token], stream: bool = False) -> dict[str, Any] | None:
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


def completion_body(call: OpenAICall) -> dict[str, Any]:
    out = []
    for index, c in enumerate(call.choices):
        o = c.outcome
        choice: dict[str, Any] = {"index": index}
        reason = finish_reason(c)
        if call.req.tools is not None:
            reader = ToolCallReader()
            reader.feed(o.text)
            reader.finish()
            calls = [{"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
                     for t in reader.calls]
            choice["message"] = {"role": "assistant", "content": reader.content or None}
            if calls:
                choice["message"]["tool_calls"] = calls
                reason = _TOOL_CALLS if reason == "stop" else reason
        elif call.chat:
            choice["message"] = {"role": "assistant", "content": o.text}
        else:
            choice["text"] = o.text
        choice["logprobs"] = _logprobs(call, o.tokens)
        choice["finish_reason"] = reason
        out.append(choice)
    return call.envelope(choices=out, usage=call.usage())


def _chunk(call: OpenAICall, index: int, tokens: list[Token], first: bool, reason: str | None,
           delta: dict[str, Any] | None = None) -> dict[str, Any]:
    """One chunk: a token's text, or (tools) a delta the ToolCallReader made."""
    text = _text(tokens)
    logprobs = _logprobs(call, tokens, stream=True) if tokens else None
    if call.chat:
        if delta is None:
            delta = {"content": text} if tokens or first else {}
        if first:
            delta = {"role": "assistant", **delta}
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
    else:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
    extra = {"usage": None} if call.req.include_usage else {}
    return call.envelope(chunk=True, choices=[choice], **extra)


def error_event(exc: GenfleetError) -> bytes:
    return openai_sse({"error": {"message": exc.message, "type": exc.error_type, "http_status_code": exc.status_code}})


def _tool_chunks(call: OpenAICall, index: int, deltas: list[dict[str, Any]], started: set[int],
                 event_id: str | None = None) -> list[bytes]:
    out = []
    for delta in deltas:
        out.append(openai_sse(_chunk(call, index, [], index not in started, None, delta), event_id))
        started.add(index)
    return out


async def openai_stream(items: AsyncIterator[list[tuple[int, list[Token] | None]]], call: OpenAICall,
                        metrics: GatewayMetrics) -> AsyncIterator[bytes]:
    """The chunks of an interleaved run (Lifecycle.interleave): one chunk per token, one with the
    finish reason per choice, the usage chunk when asked for, then [DONE]; or an error event."""
    # A resumed stream's client has had its first chunk (with the role) already.
    started: set[int] = {i for i, c in enumerate(call.choices) if c.resume is not None and c.resume[1] >= 0}
    readers = {i: ToolCallReader() for i in range(len(call.choices))} if call.req.tools is not None else {}
    try:
        async for wake in items:
            chunk: list[bytes] = []
            for index, burst in wake:
                reader = readers.get(index)
                if burst is not None:
                    for token in burst:
                        event_id = f"{token.req_id}:{token.seq}" if call.event_ids else None
                        if reader is not None:
                            chunk += _tool_chunks(call, index, reader.feed(_text([token])), started, event_id)
                            continue
                        first = index not in started
                        started.add(index)
                        chunk.append(openai_sse(_chunk(call, index, [token], first, None), event_id))
                    continue
                reason = finish_reason(call.choices[index])
                if reader is not None:
                    chunk += _tool_chunks(call, index, reader.finish(), started)
                    reason = _TOOL_CALLS if reader.made_calls and reason == "stop" else reason
                chunk.append(openai_sse(_chunk(call, index, [], index not in started, reason)))
            yield b"".join(chunk)
    except GenfleetError as exc:
        metrics.record_failure(exc)
        log_if_server_error(exc, "an OpenAI stream event")
        yield error_event(exc)
        return
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    tail = openai_sse(call.envelope(chunk=True, choices=[], usage=call.usage())) if call.req.include_usage else b""
    yield tail + DONE
