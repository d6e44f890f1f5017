"""OpenAI request bodies (/v1/chat/completions, /v1/completions) mapped onto TGI's parameters.

Mapping follows TGI where OpenAI clients work with it (temperature 0 = greedy, max_tokens ->
max_new_tokens, top_logprobs -> top_n_tokens) and OpenAI where TGI breaks them: top_p=1.0 is
accepted, `n` fans out, `stop` may be a string, presence_penalty keeps OpenAI's meaning.
The extras vLLM users send are taken as vLLM reads them: `top_k` (-1 or 0 = off),
`repetition_penalty`, `min_tokens` and `ignore_eos`; `watermark` is TGI's parameter of that name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from common.errors import GenfleetError, ValidationError
from gateway.grammar import GrammarSpec, parse_response_format
from gateway.schemas import GenerateParameters, check_ranges
from gateway.tools import ToolChoice, parse_tools, tool_grammar

__all__ = ["OpenAIRequest", "parse_chat", "parse_completion", "chat_messages"]


class _Unprocessable(GenfleetError):
    """TGI's ad-hoc 422s of /v1/completions, whose error_type is a phrase."""

    @property
    def status_code(self) -> int:
        return 422


@dataclass(frozen=True)
class OpenAIRequest:
    prompts: tuple[str, ...] | None  # /v1/completions; None for chat
    messages: tuple[dict[str, Any], ...] | None  # chat, normalised to {role, content: str}
    model: str | None
    parameters: GenerateParameters
    n: int
    stream: bool
    include_usage: bool
    logprobs: bool
    tools: ToolChoice | None = None  # chat with tools the model may (or must) call


def _get(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ValidationError(f"`{name}` must be {what}")
    if not isinstance(v, kind) or (isinstance(v, float) and not math.isfinite(v)):
        raise ValidationError(f"`{name}` must be {what}")
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 1 << 63:
        raise ValidationError(f"`{name}` is out of range")
    return v


def _common(body: Any, *, max_n: int) -> tuple[GenerateParameters, int, bool, bool]:
    for unsupported in ("functions", "logit_bias"):
        if body.get(unsupported):
            raise ValidationError(f"`{unsupported}` is not supported yet")
    temperature = _get(body, "temperature", (int, float), "a number")
    top_p = _get(body, "top_p", (int, float), "a number")
    max_tokens = _get(body, "max_completion_tokens", int, "an integer")
    if max_tokens is None:
        max_tokens = _get(body, "max_tokens", int, "an integer")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise ValidationError("`stop` must be a string or a list of strings")
    n = _get(body, "n", int, "an integer") or 1
    if not 1 <= n <= max_n:
        raise ValidationError(f"`n` must be >= 1 and <= {max_n}. Given: {n}")
    stream = _get(body, "stream", bool, "a boolean") or False
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ValidationError("`stream_options` must be an object")
    include_usage = bool((options or {}).get("include_usage", False))
    greedy = temperature is not None and temperature == 0
    top_k = _get(body, "top_k", int, "an integer")
    if top_k is not None and top_k < -1:
        raise ValidationError(f"`top_k` must be -1 (off) or a positive integer. Given: {top_k}")
    min_tokens = _get(body, "min_tokens", int, "an integer") or 0
    if min_tokens < 0:
        raise ValidationError(f"`min_tokens` must be greater than or equal to 0. Given: {min_tokens}")
    if max_tokens is not None and min_tokens > max_tokens:
        raise ValidationError(f"`min_tokens` must be less than or equal to `max_tokens`={max_tokens}. Given: {min_tokens}")
    if top_p is not None and top_p >= 1.0:
        top_p = None  # OpenAI's default value; TGI rejects it, its clients send it
    params = GenerateParameters(
        temperature=None if greedy or temperature is None else float(temperature),
        do_sample=not greedy,
        top_p=None if top_p is None else float(top_p),
        frequency_penalty=_get(body, "frequency_penalty", (int, float), "a number"),
        presence_penalty=_get(body, "presence_penalty", (int, float), "a number"),
        repetition_penalty=_get(body, "repetition_penalty", (int, float), "a number"),
        top_k=top_k if top_k is not None and top_k > 0 else None,
        min_tokens=min_tokens,
        ignore_eos=_get(body, "ignore_eos", bool, "a boolean") or False,
        watermark=_get(body, "watermark", bool, "a boolean") or False,
        seed=_get(body, "seed", int, "an integer"),
        priority=_get(body, "priority", int, "an integer") or 0,
        max_new_tokens=max_tokens,
        stop=tuple(stop or ()),
        details=True,
        grammar=_grammar(body),
    )
    if params.max_new_tokens is not None and params.max_new_tokens <= 0:
        raise ValidationError("`max_tokens` must be strictly positive")
    check_ranges(params)
    if params.seed is not None and params.seed < 0:
        raise ValidationError("`seed` must be a non-negative integer")
    return params, n, stream, include_usage


def parse_chat(body: Any, *, max_n: int) -> OpenAIRequest:
    if not isinstance(body, dict):
        raise ValidationError("expected a JSON object with `messages`")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValidationError("`messages` must be a non-empty list")
    params, n, stream, include_usage = _common(body, max_n=max_n)
    logprobs = _get(body, "logprobs", bool, "a boolean") or False
    top = _get(body, "top_logprobs", int, "an integer")
    if top is not None and not logprobs:
        raise ValidationError("`top_logprobs` requires `logprobs` to be true")
    if top:
        params = _replace(params, top_n_tokens=top)
    tools = parse_tools(body, has_grammar=params.grammar is not None)
    if tools is not None:
        params = _replace(params, grammar=tool_grammar(tools))
    return OpenAIRequest(None, chat_messages(messages), _model(body), params, n, stream, include_usage, logprobs, tools)


def parse_completion(body: Any, *, max_n: int, max_prompts: int) -> OpenAIRequest:
    if not isinstance(body, dict):
        raise ValidationError("expected a JSON object with `prompt`")
    if body.get("tools"):
        raise ValidationError("`tools` are taken by /v1/chat/completions only")
    if body.get("suffix"):
        raise _Unprocessable("suffix not supported", "Suffix is not supported and can be achieved by preprocessing the prompt.")
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValidationError("`prompt` must be a non-empty string or a non-empty list of non-empty strings")
    if len(prompts) > max_prompts:
        raise _Unprocessable(
            "batch size exceeded",
            f"Number of prompts exceeds the maximum allowed batch size of {max_prompts}",
        )
    params, n, stream, include_usage = _common(body, max_n=max_n)
    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0):
        raise ValidationError("`logprobs` must be a non-negative integer")
    if logprobs:
        params = _replace(params, top_n_tokens=logprobs)
    return OpenAIRequest(tuple(prompts), None, _model(body), params, n, stream, include_usage, logprobs is not None)


def chat_messages(messages: list[Any]) -> tuple[dict[str, Any], ...]:
    """Messages for the chat template: content parts joined to text, images as markdown (as TGI)."""
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValidationError("each message must be an object with a string `role`")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict):
                    raise ValidationError("message content parts must be objects")
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif part.get("type") == "image_url":
                    parts.append(f"![]({(part.get('image_url') or {}).get('url', '')})")
                else:
                    raise ValidationError(f"unsupported message content part: {part.get('type')!r}")
            content = "".join(parts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise ValidationError("message `content` must be a string or a list of parts")
        msg: dict[str, Any] = {"role": m["role"], "content": content}
        for key in ("name", "tool_call_id"):
            if isinstance(m.get(key), str):
                msg[key] = m[key]
        if m.get("tool_calls"):
            msg["tool_calls"] = _tool_calls(m["tool_calls"])
        out.append(msg)
    return tuple(out)


def _grammar(body: dict[str, Any]) -> GrammarSpec | None:
    """response_format, or vLLM's extras guided_json / guided_regex (one of them at most)."""
    given = [name for name in ("response_format", "guided_json", "guided_regex") if body.get(name) is not None]
    if len(given) > 1:
        raise ValidationError(f"only one of `response_format`, `guided_json` and `guided_regex` may be set. Given: {given}")
    if body.get("guided_json") is not None:
        schema = body["guided_json"]
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise ValidationError(f"grammar is not valid: {exc}") from exc
        return GrammarSpec.json_schema(schema)
    if body.get("guided_regex") is not None:
        if not isinstance(body["guided_regex"], str):
            raise ValidationError("`guided_regex` must be a string")
        return GrammarSpec("regex", body["guided_regex"])
    return parse_response_format(body.get("response_format"))


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    """An assistant message's earlier calls, in OpenAI's shape, for the chat template."""
    if not isinstance(calls, list):
        raise ValidationError("`tool_calls` must be a list")
    out = []
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), str):
            raise ValidationError("each tool call must be {id, type: function, function: {name, arguments: string}}")
        out.append({"id": str(c.get("id", "")), "type": "function", "function": {"name": fn["name"], "arguments": fn["arguments"]}})
    return out


def _model(body: dict[str, Any]) -> str | None:
    model = body.get("model")
    return model if isinstance(model, str) else None


def _replace(p: GenerateParameters, **changes: Any) -> GenerateParameters:
    from dataclasses import replace

    return replace(p, **changes)
