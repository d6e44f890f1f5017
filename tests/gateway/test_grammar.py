"""TGI's `parameters.grammar` at the gateway: the grammar text that reaches the worker, and TGI's
422s for bad schemas, bad regexes and --disable-grammar-support, before anything is queued."""

from __future__ import annotations

import json
import time

import httpx
import llguidance
import pytest

from gateway.grammar import GrammarSpec, compile_grammar
from tests.gateway.harness import GatewayServer, ScriptedWorker

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {
    "type": "object", "properties": {"k": {"type": "integer"}}}}}}
ROUTES = ("/generate", "/generate_stream", "/")


def _post(gw: GatewayServer, route: str, grammar: object) -> httpx.Response:
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 2, "grammar": grammar}}
    return httpx.post(f"{gw.url}{route}", json=body, timeout=10)


def _received(worker: ScriptedWorker, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(worker.received) < n:
        assert time.monotonic() < deadline, "the request never reached the worker"
        time.sleep(0.02)


@pytest.mark.parametrize("grammar", [
    {"type": "json", "value": SCHEMA},
    {"type": "json_object", "value": json.dumps(SCHEMA)},
    {"type": "json_schema", "value": {"name": "thing", "schema": SCHEMA}},
    {"type": "regex", "value": "[0-9]{3}-[a-z]+"},
], ids=["json", "json_object-string", "json_schema", "regex"])
def test_a_grammar_travels_as_llguidance_text(gateway: GatewayServer, worker: ScriptedWorker, grammar: dict) -> None:  # type: ignore[type-arg]
    for n, route in enumerate(ROUTES, 1):
        r = _post(gateway, route, grammar)
        assert r.status_code == 200, (route, r.text)
        _received(worker, n)
        sent = worker.received[-1].params.grammar
        assert sent is not None and llguidance.LLMatcher.validate_grammar(sent) == ""
    if grammar["type"] != "regex":
        # Listed properties only, in the schema's order (objects nested in arrays too).
        schema = json.loads(sent)["grammars"][0]["json_schema"]
        assert list(schema["properties"]) == ["name", "tags"] and schema["additionalProperties"] is False
        assert schema["properties"]["tags"]["items"]["additionalProperties"] is False


@pytest.mark.parametrize("grammar, message", [
    ({"type": "json", "value": {"type": "object"}}, "grammar is not valid: Grammar must have a 'properties' field"),
    ({"type": "json", "value": {"properties": {"a": {"type": "strin"}}}}, "grammar is not valid: "),
    ({"type": "json", "value": "{not json"}, "grammar is not valid: "),
    ({"type": "json", "value": {"properties": {"a": {"type": "string", "format": "no-such-format"}}}},
     "cannot compile regex from schema: "),
    ({"type": "regex", "value": "[a-"}, "grammar is not valid: "),
    ({"type": "regex", "value": 3}, "`grammar.value` must be a string"),
    ({"type": "lark", "value": "start: x"}, "`grammar.type` must be one of"),
    ({"value": "x"}, "`grammar` must be an object with `type` and `value`"),
    ({"type": "json_schema", "value": {"name": "x"}}, "`grammar.value` must be an object with `schema`"),
], ids=["no-properties", "meta-schema", "not-json", "engine-refuses", "bad-regex", "regex-not-string",
        "unknown-type", "no-type", "json_schema-without-schema"])
def test_bad_grammars_are_422_before_queueing(gateway: GatewayServer, worker: ScriptedWorker, grammar: dict, message: str) -> None:  # type: ignore[type-arg]
    for route in ROUTES:
        r = _post(gateway, route, grammar)
        assert r.status_code == 422, (route, r.text)
        assert r.json()["error_type"] == "validation"
        assert r.json()["error"].startswith(f"Input validation error: {message}"), r.json()
    assert worker.received == []


def test_disable_grammar_support_answers_as_tgi(make_gateway, worker: ScriptedWorker) -> None:  # type: ignore[no-untyped-def]
    with make_gateway(disable_grammar_support=True) as gw:
        for route in ROUTES:
            r = _post(gw, route, {"type": "regex", "value": "[a-"})  # refused before it is even checked
            assert r.status_code == 422
            assert r.json() == {"error": "Input validation error: grammar is not supported", "error_type": "validation"}
        assert _post(gw, "/generate", None).status_code == 200  # requests without one are served


def test_compiled_once_per_grammar() -> None:
    spec = GrammarSpec.json_schema({"properties": {"x": {"type": "number"}}})
    assert compile_grammar(spec) is compile_grammar(GrammarSpec.json_schema({"properties": {"x": {"type": "number"}}}))


MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("extra, schema", [
    ({"response_format": {"type": "json_object"}}, {"type": "object"}),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA, "strict": True}}}, SCHEMA),
    ({"response_format": {"type": "json", "value": SCHEMA}}, SCHEMA),  # TGI's own shape
    ({"guided_json": SCHEMA}, SCHEMA),  # vLLM's extra
    ({"response_format": {"type": "text"}}, None),
], ids=["json_object", "json_schema", "tgi-shape", "guided_json", "text"])
def test_response_format_reaches_the_worker_on_both_openai_routes(
    gateway: GatewayServer, worker: ScriptedWorker, extra: dict, schema: dict | None  # type: ignore[type-arg]
) -> None:
    bodies = {"/v1/chat/completions": {"messages": MESSAGES}, "/v1/completions": {"prompt": "Hi"}}
    for n, (route, body) in enumerate(bodies.items(), 1):
        r = httpx.post(f"{gateway.url}{route}", json={**body, "max_tokens": 2, **extra}, timeout=10)
        assert r.status_code == 200, r.text
        _received(worker, n)
        sent = worker.received[-1].params.grammar
        if schema is None:
            assert sent is None
            continue
        assert sent is not None
        got = json.loads(sent)["grammars"][0]["json_schema"]
        assert got["type"] == "object" and list(got.get("properties", {})) == list(schema.get("properties", {}))


@pytest.mark.parametrize("response_format, message", [
    ({"type": "xml"}, "`response_format.type` must be"),
    ({"type": "json_schema"}, "`response_format.json_schema` must be an object with a string `name`"),
    ({"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "strin"}}}, "grammar is not valid: "),
    ({"type": "json_schema", "json_schema": {"name": "t", "schema": {}, "strict": "yes"}}, "`response_format.json_schema.strict`"),
], ids=["unknown-type", "no-json_schema", "bad-schema", "bad-strict"])
def test_bad_response_formats_are_422(gateway: GatewayServer, worker: ScriptedWorker, response_format: dict, message: str) -> None:  # type: ignore[type-arg]
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={"messages": MESSAGES, "response_format": response_format},
                   timeout=10)
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith(f"Input validation error: {message}"), r.json()
    assert worker.received == []


def test_disable_grammar_support_refuses_response_format(make_gateway, worker: ScriptedWorker) -> None:  # type: ignore[no-untyped-def]
    with make_gateway(disable_grammar_support=True) as gw:
        r = httpx.post(f"{gw.url}/v1/chat/completions", json={"messages": MESSAGES, "response_format": {"type": "json_object"}},
                       timeout=10)
        assert r.status_code == 422 and r.json()["error"] == "Input validation error: grammar is not supported"
