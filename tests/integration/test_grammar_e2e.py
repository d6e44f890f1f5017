"""Structured generation end to end: real Redis, a gateway and two workers on the real default
model. Every constrained output parses and validates against its schema (or fully matches its
regex), streamed or not, and stays valid when its worker is killed mid-stream."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.integration.fleet import FleetProcesses
from tests.reliability.harness import StreamResult, busiest_worker, run_streams, worker_infos

SHORT = {"type": "string", "maxLength": 12}
SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": {"type": "object", "properties": {
        "name": SHORT, "address": {"type": "object", "properties": {"city": SHORT, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                                   "required": ["city", "zip"]}}, "required": ["name", "address"]},
    "array-enum": {"type": "object", "properties": {
        "colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3},
        "size": {"enum": ["S", "M", "L"]}}, "required": ["colors", "size"]},
    "defs-ref": {"type": "object", "$defs": {"point": {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": -9, "maximum": 9}, "y": {"type": "integer", "minimum": -9, "maximum": 9}},
        "required": ["x", "y"]}}, "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start", "end"]},
    "anyof": {"type": "object", "properties": {"value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 999},
                                                                    {"type": "boolean"}]}}, "required": ["value"]},
    "format-minmax": {"type": "object", "properties": {
        "day": {"type": "string", "format": "date"}, "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "ok": {"type": "boolean"}}, "required": ["day", "score", "ok"]},
    "list-of-objects": {"type": "object", "properties": {"tasks": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
        "type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99}, "done": {"type": "boolean"}},
        "required": ["id", "done"]}}}, "required": ["tasks"]},
    "email-port": {"type": "object", "properties": {"email": {"type": "string", "format": "email", "maxLength": 20},
                                                    "port": {"type": "integer", "minimum": 1, "maximum": 65535}},
                   "required": ["email", "port"]},
    "number-range": {"type": "object", "properties": {"price": {"type": "number", "minimum": 0, "maximum": 100},
                                                      "qty": {"type": "integer", "exclusiveMinimum": 0, "maximum": 50}},
                     "required": ["price", "qty"]},
    "oneof-const": {"type": "object", "properties": {"kind": {"const": "shape"}, "shape": {"oneOf": [
        {"type": "object", "properties": {"circle": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["circle"]},
        {"type": "object", "properties": {"square": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["square"]}]}},
        "required": ["kind", "shape"]},
    "optional-strings": {"type": "object", "additionalProperties": False, "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 10},
        "words": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 8}, "maxItems": 2},
        "note": {"type": ["string", "null"], "maxLength": 8}}, "required": ["title"]},
}
REGEXES = {"phone": r"[0-9]{3}-[0-9]{4}", "answer": r"(yes|no), because [a-z ]{1,20}\.", "hex": r"#[0-9a-f]{6}",
           "date": r"20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])",
           "ipv4": r"(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){3}"}
MAX_NEW = 48
# CI sends each grammar once and kills a worker under 10 guided streams; the full scale
# (GENFLEET_GRAMMAR_REQUESTS=100 GENFLEET_GRAMMAR_KILL_STREAMS=20) takes ~4x longer.
REQUESTS = int(os.environ.get("GENFLEET_GRAMMAR_REQUESTS", len(SCHEMAS) + len(REGEXES)))
KILL_STREAMS = int(os.environ.get("GENFLEET_GRAMMAR_KILL_STREAMS", 10))


@pytest.fixture(scope="module")
def fleet(redis_server, default_model_dir: Path) -> Iterator[FleetProcesses]:  # type: ignore[no-untyped-def]
    processes = FleetProcesses(redis_server.url, f"gr{uuid.uuid4().hex[:6]}").start(
        num_workers=2, worker_args=("--max-batch-total-tokens", "8192"),
        gateway_args=("--max-input-tokens", "512", "--max-total-tokens", "1024"),
    )
    deadline = time.monotonic() + 120
    while len(worker_infos(processes.redis_url, processes.prefix)) < 2:
        assert time.monotonic() < deadline, "workers did not both heartbeat"
        time.sleep(0.2)
    yield processes
    processes.stop()


def _assert_valid(schema: dict[str, Any], text: str) -> None:
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    validator.validate(json.loads(text))


def _generate(base: str, prompt: str, grammar: dict[str, Any]) -> dict[str, Any]:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": MAX_NEW, "details": True, "grammar": grammar}}
    r = httpx.post(f"{base}/generate", json=body, timeout=900)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _stream(base: str, prompt: str, grammar: dict[str, Any]) -> str:
    text, finish = "", None
    body = {"inputs": prompt, "parameters": {"max_new_tokens": MAX_NEW, "details": True, "grammar": grammar}}
    with httpx.stream("POST", f"{base}/generate_stream", json=body, timeout=900) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                assert "error" not in event, event
                if event["generated_text"] is not None:
                    text, finish = event["generated_text"], event["details"]["finish_reason"]
    assert finish == "eos_token", (finish, text)
    return text


def test_every_schema_and_regex_output_is_valid_streamed_or_not(fleet: FleetProcesses) -> None:
    base = fleet.base_url
    grammars: list[tuple[str, dict[str, Any] | None, str | None]] = [
        (f"Here is a JSON object describing a {name.replace('-', ' ')} example:\n", schema, None)
        for name, schema in SCHEMAS.items()] + [(f"The {name} is ", None, regex) for name, regex in REGEXES.items()]
    jobs = []
    with ThreadPoolExecutor(16) as pool:
        # The grammars in turn, every other request streamed: the CPU model's steps are the cost here.
        for k in range(REQUESTS):
            prompt, schema, regex = grammars[k % len(grammars)]
            call = _stream if (k + k // len(grammars)) % 2 else _generate
            grammar = {"type": "json", "value": schema} if schema is not None else {"type": "regex", "value": regex}
            jobs.append((schema, regex, pool.submit(call, base, prompt, grammar)))
        for schema, regex, job in jobs:
            got = job.result(timeout=900)
            text = got["generated_text"] if isinstance(got, dict) else got
            if isinstance(got, dict):
                assert got["details"]["finish_reason"] == "eos_token", got
            if schema is not None:
                _assert_valid(schema, text)
            else:
                assert re.fullmatch(regex, text), (regex, text)  # type: ignore[arg-type]


def test_openai_and_huggingface_clients_get_valid_structured_output(fleet: FleetProcesses) -> None:
    import openai
    from huggingface_hub import InferenceClient

    schema = SCHEMAS["array-enum"]
    client = openai.OpenAI(base_url=f"{fleet.base_url}/v1", api_key="-", timeout=900)
    hf = InferenceClient(fleet.base_url, timeout=900)
    messages = [{"role": "user", "content": "Describe a t-shirt as JSON."}]
    with ThreadPoolExecutor(4) as pool:
        chat = pool.submit(client.chat.completions.create, model="tgi", messages=messages, max_tokens=MAX_NEW,
                           temperature=0, response_format={"type": "json_schema", "json_schema": {
                               "name": "shirt", "schema": schema, "strict": True}})
        anything = pool.submit(client.completions.create, model="tgi", prompt="A JSON object:", max_tokens=MAX_NEW,
                               temperature=0, extra_body={"response_format": {"type": "json_object"}})
        tgi = pool.submit(hf.text_generation, "The phone is ", max_new_tokens=MAX_NEW,
                          grammar={"type": "regex", "value": REGEXES["phone"]})
        _assert_valid(schema, chat.result().choices[0].message.content or "")
        assert chat.result().choices[0].finish_reason == "stop"
        assert isinstance(json.loads(anything.result().choices[0].text), dict)
        assert re.fullmatch(REGEXES["phone"], tgi.result())


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
                           "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Current time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}}, "required": ["zone"]}}}


def test_openai_client_tool_calls_whole_and_streamed(fleet: FleetProcesses) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{fleet.base_url}/v1", api_key="-", timeout=900)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}

    def streamed() -> tuple[dict[int, dict[str, str]], str | None]:
        calls: dict[int, dict[str, str]] = {}
        reason = None
        for chunk in client.chat.completions.create(model="tgi", messages=messages, tools=[WEATHER, TIME], temperature=0,
                                                    tool_choice={"type": "function", "function": {"name": "get_time"}},
                                                    max_tokens=MAX_NEW, stream=True):
            choice = chunk.choices[0]
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += d.id or ""
                call["name"] += (d.function.name or "") if d.function else ""
                call["arguments"] += (d.function.arguments or "") if d.function else ""
            reason = choice.finish_reason or reason
        return calls, reason

    from huggingface_hub import InferenceClient

    hf = InferenceClient(fleet.base_url, timeout=900)
    with ThreadPoolExecutor(4) as pool:
        via_hf = pool.submit(hf.chat_completion, messages, tools=[WEATHER, TIME], tool_choice="required", max_tokens=MAX_NEW,
                             temperature=0)
        required = pool.submit(client.chat.completions.create, model="tgi", messages=messages, tools=[WEATHER, TIME],
                               tool_choice="required", temperature=0, max_tokens=MAX_NEW)
        auto = pool.submit(client.chat.completions.create, model="tgi", messages=messages, tools=[WEATHER, TIME],
                           temperature=0, max_tokens=MAX_NEW)
        stream = pool.submit(streamed)
        choice = required.result().choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        for call in choice.message.tool_calls:
            assert call.type == "function" and call.id.startswith("call_")
            _assert_valid(schemas[call.function.name], call.function.arguments)
        answer = auto.result().choices[0]
        if answer.message.tool_calls:  # "auto": a call or text, the model's choice; either is well formed
            assert answer.finish_reason == "tool_calls"
            for call in answer.message.tool_calls:
                _assert_valid(schemas[call.function.name], call.function.arguments)
        else:
            assert answer.message.content and answer.finish_reason in ("stop", "length")
        hf_call = via_hf.result().choices[0].message.tool_calls[0].function
        arguments = hf_call.arguments if isinstance(hf_call.arguments, str) else json.dumps(hf_call.arguments)
        _assert_valid(schemas[hf_call.name], arguments)
        calls, reason = stream.result()
        assert reason == "tool_calls" and list(calls) == [0]
        assert calls[0]["name"] == "get_time" and calls[0]["id"].startswith("call_")
        _assert_valid(schemas["get_time"], calls[0]["arguments"])


GUIDED = {"type": "object", "properties": {
    "item": {"type": "string", "maxLength": 16}, "count": {"type": "integer", "minimum": 1, "maximum": 99},
    "tags": {"type": "array", "items": {"enum": ["new", "used", "rare"]}, "maxItems": 3}},
    "required": ["item", "count", "tags"]}


def test_kill_9_mid_guided_streams_keeps_every_output_valid(fleet: FleetProcesses) -> None:
    prompts = [f"Inventory line {i}, as JSON:" for i in range(KILL_STREAMS)]
    out: list[StreamResult] = []
    grammar = {"type": "json", "value": GUIDED}
    client = threading.Thread(target=lambda: out.extend(run_streams(fleet.base_url, prompts, MAX_NEW, timeout=900, grammar=grammar)),
                              daemon=True)
    client.start()
    procs = {f"{fleet.prefix}-w{i}": p for i, p in enumerate(fleet.workers)}
    victim = busiest_worker(fleet.redis_url, fleet.prefix, procs, timeout=120)
    time.sleep(1.0)  # let it stream some tokens first
    victim.kill()
    assert victim.wait(5) == -signal.SIGKILL
    client.join(900)
    assert not client.is_alive(), "clients still waiting"
    assert len(out) == len(prompts)
    for r in out:
        assert r.completed, (r.prompt, r.status, r.error_type, r.exception)
        assert r.lost == 0 and r.duplicated == 0 and r.seqs == list(range(len(r.token_ids))), r.seqs
        assert r.finish_reason == "eos_token", (r.prompt, r.text)
        _assert_valid(GUIDED, r.text)
