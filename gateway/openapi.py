"""GET /api-doc/openapi.json: the OpenAPI 3 spec, built from the schema classes (/docs: gateway/docs_page.py).

Request bodies come from the same dataclasses the routes validate into (gateway/schemas.py); the
response and OpenAI request shapes are declared here, once, for the spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from common.watermark import WatermarkScore
from gateway import VERSION
from gateway.routes_watermark import WatermarkDetectInput
from gateway.schemas import GenerateInput

__all__ = ["openapi_spec", "openapi_json"]


@dataclass
class ErrorResponse:
    error: str
    error_type: str


@dataclass
class TokenInfo:
    id: int
    text: str
    logprob: float | None
    special: bool


@dataclass
class Details:
    finish_reason: Literal["length", "eos_token", "stop_sequence"]
    generated_tokens: int
    seed: int | None
    prefill: list[TokenInfo] = field(default_factory=list)
    tokens: list[TokenInfo] = field(default_factory=list)
    top_tokens: list[list[TokenInfo]] = field(default_factory=list)
    best_of_sequences: list[dict[str, Any]] | None = None


@dataclass
class GenerateResponse:
    generated_text: str
    details: Details | None = None


@dataclass
class StreamDetails:
    finish_reason: Literal["length", "eos_token", "stop_sequence"]
    generated_tokens: int
    seed: int | None
    input_length: int


@dataclass
class StreamResponse:
    index: int
    token: TokenInfo
    generated_text: str | None = None
    details: StreamDetails | None = None
    top_tokens: list[TokenInfo] = field(default_factory=list)


@dataclass
class SimpleToken:
    id: int
    text: str
    start: int
    stop: int


@dataclass
class ChatMessage:
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls: {id, type, function: {name, arguments}}
    tool_call_id: str | None = None  # a `tool` message: the call it answers


@dataclass
class StreamOptions:
    include_usage: bool = False


@dataclass
class ChatRequest:
    messages: list[ChatMessage]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_k: int | None = None  # vLLM's extra: -1 or 0 = off
    repetition_penalty: float | None = None  # vLLM's extra (and TGI's)
    min_tokens: int = 0  # vLLM's extra: EOS is not sampled before this many tokens
    ignore_eos: bool = False  # vLLM's extra: generate past EOS up to max_tokens
    watermark: bool = False  # TGI's parameter: bias toward the green lists (POST /watermark/detect)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # {"type": "text" | "json_object"} or {"type": "json_schema", "json_schema": {name, schema, strict}}
    response_format: dict[str, Any] | None = None
    guided_json: dict[str, Any] | None = None  # vLLM's extra: a JSON schema the answer must match
    guided_regex: str | None = None  # vLLM's extra: a regex the answer must match
    tools: list[dict[str, Any]] | None = None  # [{"type": "function", "function": {name, description, parameters}}]
    tool_choice: str | dict[str, Any] | None = None  # "none" | "auto" | "required" | {"type": "function", "function": {name}}
    parallel_tool_calls: bool = True
    tool_prompt: str | None = None  # TGI's: introduces the tools where the chat template does not take them


@dataclass
class CompletionRequest:
    prompt: str | list[str]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_k: int | None = None  # vLLM's extra: -1 or 0 = off
    repetition_penalty: float | None = None  # vLLM's extra (and TGI's)
    min_tokens: int = 0  # vLLM's extra: EOS is not sampled before this many tokens
    ignore_eos: bool = False  # vLLM's extra: generate past EOS up to max_tokens
    watermark: bool = False  # TGI's parameter: bias toward the green lists (POST /watermark/detect)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    logprobs: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None  # as on /v1/chat/completions
    guided_json: dict[str, Any] | None = None  # vLLM's extra
    guided_regex: str | None = None  # vLLM's extra


_REF = "#/components/schemas/{name}"
_GRAMMAR_TYPE = {"description": "TGI's GrammarType: the output must match it", "oneOf": [
    {"type": "null"},
    {"type": "object", "required": ["type", "value"], "properties": {
        "type": {"enum": ["json", "json_object"]}, "value": {"type": ["object", "string"]}}},
    {"type": "object", "required": ["type", "value"], "properties": {
        "type": {"const": "regex"}, "value": {"type": "string"}}},
    {"type": "object", "required": ["type", "value"], "properties": {
        "type": {"const": "json_schema"}, "value": {"type": "object", "required": ["schema"], "properties": {
            "name": {"type": "string"}, "schema": {"type": "object"}}}}},
]}


def _ref(t: type) -> dict[str, str]:
    return {"$ref": _REF.format(name=t.__name__)}


def _json(t: type | dict[str, Any]) -> dict[str, Any]:
    schema = t if isinstance(t, dict) else _ref(t)
    return {"content": {"application/json": {"schema": schema}}}


def _events(data: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event; its `data` is JSON of the given schema."""
    return {"type": "object", "properties": {
        "id": {"type": "string"}, "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data}}}


def _errors(*codes: tuple[int, str]) -> dict[str, Any]:
    return {str(code): {"description": text, **_json(ErrorResponse)} for code, text in codes}


_RESUME_ERRORS = ((403, "The request belongs to another API key"),
                  (404, "No request of that id (unknown, or its journal expired)"),
                  (410, "The request was cancelled (its client left, or none came back within the grace period)"))
_LAST_EVENT_ID = "The `id:` of the last event received (`<request id>:<seq>`): the stream goes on after it"
_NAMING = [
    {"name": "x-request-id", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Names the request (1-128 of A-Z a-z 0-9 . _ : -); a retry with the same id and body gets "
                    "the same answer, generated once"},
    {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "As x-request-id, and takes precedence over it"},
]
_RESUME = [*_NAMING, {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
                      "description": f"{_LAST_EVENT_ID}; sent with the same body, to any gateway"}]


def _post(summary: str, body: type, ok: dict[str, Any], tag: str,
          parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A POST route; `parameters`: _NAMING for a generation, _RESUME for one that streams."""
    errors = _errors((400, "Body is not JSON"), (413, "Body over --payload-limit"), (422, "Input validation error"),
                     (424, "Generation error"), (429, "Over --max-concurrent-requests"), (503, "No Redis or no worker"),
                     *(_RESUME_ERRORS if parameters else ()))
    return {"post": {"tags": [tag], "summary": summary, "parameters": parameters or [],
                     "requestBody": {"required": True, **_json(body)}, "responses": {"200": ok, **errors}}}


def _stream_by_id(sse: dict[str, Any]) -> dict[str, Any]:
    """GET /generate_stream/{request_id} (gateway/routes_generate.py `stream_by_id`)."""
    parameters = [
        {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "The request's id: its response's x-request-id header, or the part of an event id before "
                        "the last colon"},
        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
         "description": f"{_LAST_EVENT_ID}; a browser's EventSource sends it by itself when it reconnects"},
        {"name": "last_event_id", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "The same, for a first connection that cannot send headers (EventSource); the header wins"},
    ]
    responses = {"200": sse, "204": {"description": "Nothing after Last-Event-ID: the request has finished"},
                 **_errors((400, "Bad request id or Last-Event-ID"), *_RESUME_ERRORS,
                           (503, "No Redis, or the request's model has no worker"))}
    return {"get": {"tags": ["genfleet"], "parameters": parameters, "responses": responses,
                    "summary": "Re-open a request's token stream by its id (for EventSource): from its first token, "
                               "or after Last-Event-ID, then live to its end, through any gateway; the last event "
                               "carries details"}}


def _cancel_by_id() -> dict[str, Any]:
    """POST /cancel/{request_id} (gateway/routes_cancel.py)."""
    parameters = [{"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": "The request's id (its response's x-request-id header)"}]
    ok = {"description": "`cancelled` true; or false with the `finish_reason` of a request that had ended", **_json({
        "type": "object", "required": ["request_id", "cancelled"], "properties": {
            "request_id": {"type": "string"}, "cancelled": {"type": "boolean"}, "finish_reason": {"type": "string"}}})}
    responses = {"200": ok, **_errors(*_RESUME_ERRORS[:2], (503, "No Redis"))}
    return {"post": {"tags": ["genfleet"], "parameters": parameters, "responses": responses,
                     "summary": "End a request from any gateway: its stream ends with finish reason `cancelled` "
                                "(the tokens so far stand) and its worker frees its KV at the next step"}}


@dataclass
class LoadLoraAdapterRequest:
    lora_name: str  # the adapter id requests will name (adapter_id, or OpenAI's model)
    lora_path: str  # a PEFT adapter directory on the workers' hosts (or a hub id in their cache)
    model: str | None = None  # the base model (default: x-model-id, else --model-id)


@dataclass
class UnloadLoraAdapterRequest:
    lora_name: str
    model: str | None = None


def _lora_admin(summary: str, body: type) -> dict[str, Any]:
    """POST /v1/load_lora_adapter and /v1/unload_lora_adapter (gateway/routes_lora.py)."""
    ok = {"description": "vLLM's `Success: ...` text", "content": {"text/plain": {"schema": {"type": "string"}}}}
    errors = _errors((400, "A worker refused it (path, format, fit), or the body is not JSON"),
                     (404, "Runtime updating is off (--allow-runtime-lora-updating), or no such adapter to unload"),
                     (413, "Body over --payload-limit"), (422, "Input validation error"),
                     (503, "No Redis, no worker, or a worker did not answer"))
    return {"post": {"tags": ["genfleet"], "summary": summary, "requestBody": {"required": True, **_json(body)},
                     "responses": {"200": ok, **errors}}}


def _get(summary: str, ok: dict[str, Any], tag: str) -> dict[str, Any]:
    return {"get": {"tags": [tag], "summary": summary, "responses": {"200": ok}}}


def openapi_spec() -> Any:
    types = [GenerateInput, GenerateResponse, StreamResponse, ErrorResponse, SimpleToken, ChatRequest,
             CompletionRequest, WatermarkDetectInput, WatermarkScore, LoadLoraAdapterRequest, UnloadLoraAdapterRequest]
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    # GenerateParameters holds the parsed grammar (gateway/grammar.py's GrammarSpec); clients send TGI's GrammarType.
    components.pop("GrammarSpec", None)
    components["GenerateParameters"]["properties"]["grammar"] = _GRAMMAR_TYPE
    sse = {"description": "Server-sent events",
           "content": {"text/event-stream": {"schema": _events(_ref(StreamResponse))}}}
    oai = {"description": "OpenAI response object, or server-sent chunks ending in `data: [DONE]` when streaming",
           "content": {"application/json": {"schema": {"type": "object"}},
                       "text/event-stream": {"schema": _events({"type": "object"})}}}
    paths = {
        "/": _post("Generate (non-streaming: a list of one; stream=true: SSE)", GenerateInput,
                   {"description": "Generated text, or token events when `stream` is true",
                    "content": {"application/json": {"schema": {"type": "array", "items": _ref(GenerateResponse)}},
                                "text/event-stream": {"schema": _events(_ref(StreamResponse))}}},
                   "Text Generation Inference", _RESUME),
        "/generate": _post("Generate tokens", GenerateInput, {"description": "Generated text",
                                                               **_json(GenerateResponse)}, "Text Generation Inference",
                           _NAMING),
        "/generate_stream": _post("Generate a stream of token events", GenerateInput, sse, "Text Generation Inference",
                                  _RESUME),
        "/generate_stream/{request_id}": _stream_by_id(sse),
        "/cancel/{request_id}": _cancel_by_id(),
        "/tokenize": _post("Tokenize inputs", GenerateInput,
                           {"description": "Tokens", **_json({"type": "array", "items": _ref(SimpleToken)})},
                           "Text Generation Inference"),
        "/watermark/detect": _post("Score a text (or token ids) for this fleet's watermark (genfleet; TGI has no detector)",
                                   WatermarkDetectInput, {"description": "z-test over the green tokens",
                                                          **_json(WatermarkScore)}, "genfleet"),
        "/chat_tokenize": _post("Template and tokenize a chat", ChatRequest,
                                {"description": "Tokens and templated text", **_json({"type": "object"})},
                                "Text Generation Inference"),
        "/v1/chat/completions": _post("OpenAI chat completions", ChatRequest, oai, "OpenAI", _RESUME),
        "/v1/completions": _post("OpenAI completions", CompletionRequest, oai, "OpenAI", _RESUME),
        "/v1/models": _get("Served model", {"description": "Model list", **_json({"type": "object"})}, "OpenAI"),
        "/v1/load_lora_adapter": _lora_admin("Load a LoRA adapter on every worker of the model, without a restart "
                                             "(vLLM's route; needs --allow-runtime-lora-updating)", LoadLoraAdapterRequest),
        "/v1/unload_lora_adapter": _lora_admin("Stop serving a LoRA adapter (its running requests finish)",
                                               UnloadLoraAdapterRequest),
        "/health": _get("200 when Redis answers and a live worker serves the model, else 503",
                        {"description": "Healthy"}, "Text Generation Inference"),
        "/ping": _get("Same as /health", {"description": "Healthy"}, "Text Generation Inference"),
        "/info": _get("Model, limits and fleet", {"description": "Info", **_json({"type": "object"})},
                      "Text Generation Inference"),
        "/metrics": _get("Prometheus metrics", {"description": "Text exposition format",
                                                "content": {"text/plain": {"schema": {"type": "string"}}}},
                         "Text Generation Inference"),
    }
    spec = {
        "openapi": "3.1.0",
        "info": {"title": "genfleet", "version": VERSION,
                 "description": "Text Generation Inference compatible API served by a genfleet gateway"},
        "paths": paths,
        "components": {"schemas": components},
    }
    return msgspec.json.decode(msgspec.json.encode(spec))  # plain JSON values (tuples become lists)


async def openapi_json(request: Request) -> Response:
    spec = getattr(request.app.state, "openapi", None)
    if spec is None:
        spec = request.app.state.openapi = openapi_spec()
    return JSONResponse(spec)

