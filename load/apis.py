"""The streaming APIs a load run can drive: TGI's /generate_stream and OpenAI's completions and
chat completions (as genfleet, TGI and vLLM serve them). Each turns a prompt into a request body
and reads one SSE payload into (tokens it adds, whether the stream is done, an error if any).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import msgspec

from load.workloads import PromptSpec

__all__ = ["Api", "ApiName", "API_NAMES", "get_api", "Parsed"]

ApiName = Literal["tgi", "openai", "chat"]
API_NAMES: tuple[ApiName, ...] = ("tgi", "openai", "chat")

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class Parsed(NamedTuple):  # a tuple: built per event, and a frozen dataclass costs more to build
    tokens: int  # content events this payload carries (one per token for every server we know)
    done: bool  # the stream's final event
    error: str | None = None
    # The server's own count of generated tokens, when it reports one (final TGI details, usage).
    reported_tokens: int | None = None


class _TgiEvent(msgspec.Struct):
    """The fields of a TGI stream event a load run reads; `token` is left undecoded (only whether
    it is there matters) and unknown fields are skipped."""

    token: msgspec.Raw = msgspec.Raw(b"null")
    generated_text: Any = None
    details: Any = None
    error: Any = msgspec.UNSET


_decode_tgi = msgspec.json.Decoder(_TgiEvent).decode
_ONE_TOKEN = Parsed(1, False)


@dataclass(frozen=True, slots=True)
class Api:
    name: ApiName
    path: str
    model: str = "tgi"
    ignore_eos: bool = False

    def body(self, spec: PromptSpec) -> bytes:
        extra: dict[str, Any] = {"ignore_eos": True} if self.ignore_eos else {}
        if self.name == "tgi":
            params = {"max_new_tokens": spec.max_new_tokens, "details": True, **extra}
            return _encode({"inputs": spec.prompt, "parameters": params})
        common = {"model": self.model, "max_tokens": spec.max_new_tokens, "stream": True,
                  "stream_options": {"include_usage": True}, **extra}
        if self.name == "openai":
            return _encode({"prompt": spec.prompt, **common})
        return _encode({"messages": [{"role": "user", "content": spec.prompt}], **common})

    def parse(self, data: bytes) -> Parsed:
        if data == b"[DONE]":
            return Parsed(0, True)
        if self.name == "tgi":
            return _parse_tgi(data)
        try:
            event = _decode(data)
        except msgspec.DecodeError:
            return Parsed(0, False, f"unparseable event: {data[:100]!r}")
        if not isinstance(event, dict):
            return Parsed(0, False, f"unexpected event: {data[:100]!r}")
        if "error" in event:
            err = event["error"]
            return Parsed(0, True, err.get("message", str(err)) if isinstance(err, dict) else str(err))
        usage = event.get("usage") or {}
        reported = usage.get("completion_tokens")
        tokens = 0
        for choice in event.get("choices") or ():
            piece = choice.get("text") if self.name == "openai" else (choice.get("delta") or {}).get("content")
            if piece:
                tokens += 1
        return Parsed(tokens, False, None, reported)


def _parse_tgi(data: bytes) -> Parsed:
    try:
        event = _decode_tgi(data)
    except msgspec.ValidationError:
        return Parsed(0, False, f"unexpected event: {data[:100]!r}")
    except msgspec.DecodeError:
        return Parsed(0, False, f"unparseable event: {data[:100]!r}")
    if event.error is not msgspec.UNSET:
        err = event.error
        return Parsed(0, True, err.get("message", str(err)) if isinstance(err, dict) else str(err))
    token = bytes(event.token)
    # Any JSON value but null, false, 0, "" and empty containers counts as a token, as bool() would.
    has_token = 1 if token[:1] == b"{" and len(token) > 2 else int(bool(_decode(token)))
    if event.generated_text is None and event.details is None:
        return _ONE_TOKEN if has_token else Parsed(0, False)
    details = event.details if isinstance(event.details, dict) else {}
    return Parsed(has_token, event.generated_text is not None, None, details.get("generated_tokens"))


def get_api(name: str, model: str = "tgi", ignore_eos: bool = False) -> Api:
    paths = {"tgi": "/generate_stream", "openai": "/v1/completions", "chat": "/v1/chat/completions"}
    if name not in paths:
        raise ValueError(f"unknown API {name!r}; choose from {', '.join(API_NAMES)}")
    return Api(name, paths[name], model, ignore_eos)  # type: ignore[arg-type]
