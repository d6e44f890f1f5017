"""OpenAI tools on the gateway: the grammar that constrains calls (checked against llguidance with
the real tokenizer), TGI's tool errors, the prompt the template gets, and the tool_calls reader."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import llguidance
import pytest

from gateway.grammar import compile_grammar
from gateway.tokenizer import Tokenizer
from gateway.tool_calls import ToolCallReader
from gateway.tools import DEFAULT_TOOL_PROMPT, parse_tools, render_prompt, tool_grammar
from tests.gateway.harness import GatewayServer, ScriptedWorker

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}</tool_call>'


@pytest.fixture(scope="module")
def lltok(default_model_dir: Path) -> llguidance.LLTokenizer:
    return llguidance.LLTokenizer(str(default_model_dir / "tokenizer.json"), n_vocab=49152, eos_token=[2])


def _accepts(lltok: llguidance.LLTokenizer, body: dict, text: str) -> bool:  # type: ignore[type-arg]
    choice = parse_tools(body, has_grammar=False)
    assert choice is not None
    matcher = llguidance.LLMatcher(lltok, compile_grammar(tool_grammar(choice)), log_level=0)
    return matcher.consume_tokens(lltok.tokenize_str(text)) and matcher.is_accepting()


def test_auto_takes_text_or_a_call_and_required_only_calls(lltok: llguidance.LLTokenizer) -> None:
    auto, required = {"tools": [WEATHER, TIME]}, {"tools": [WEATHER, TIME], "tool_choice": "required"}
    assert _accepts(lltok, auto, "It is sunny in Paris.") and _accepts(lltok, auto, CALL)
    assert _accepts(lltok, required, CALL) and not _accepts(lltok, required, "It is sunny in Paris.")
    two = CALL + '\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    assert _accepts(lltok, required, two)
    assert not _accepts(lltok, {**required, "parallel_tool_calls": False}, two)
    # Arguments follow the function's schema: no unknown keys, enums hold, required keys present.
    assert not _accepts(lltok, required, CALL.replace('"unit": "C"', '"unit": "K"'))
    assert not _accepts(lltok, required, CALL.replace('"city": "Paris", ', ""))
    named = {"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}
    assert not _accepts(lltok, named, CALL)
    assert _accepts(lltok, named, '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')


TOOL_ERRORS = ("Tool with name nope not found", "Grammar and tools are mutually exclusive", "`tool_choice` needs `tools`")


@pytest.mark.parametrize("body, message", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "Tool with name nope not found"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "Grammar and tools are mutually exclusive"),
    ({"tools": [{"type": "function"}]}, "each tool must be"),
    ({"tools": [WEATHER, WEATHER]}, "function names must be unique"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "a function name must match"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "`tool_choice` must be"),
    ({"tool_choice": "required"}, "`tool_choice` needs `tools`"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}]}, "grammar is not valid"),
], ids=["unknown-name", "with-response_format", "no-function", "duplicate", "bad-name", "bad-choice", "no-tools",
        "bad-parameters"])
def test_bad_tools_are_422_tool_errors(gateway: GatewayServer, worker: ScriptedWorker, body: dict, message: str) -> None:  # type: ignore[type-arg]
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], **body},
                   timeout=10)
    assert r.status_code == 422, r.text
    got = r.json()
    if message in TOOL_ERRORS:
        assert got == {"error": f"Tool error: {message}", "error_type": "tool_error"}
    else:  # a malformed tool: TGI's body validation
        assert got["error_type"] == "validation" and got["error"].startswith(f"Input validation error: {message}"), got
    assert worker.received == []


def test_tool_choice_none_is_plain_chat_and_auto_sends_a_grammar(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    for n, choice in enumerate(("none", "auto"), 1):
        r = httpx.post(f"{gateway.url}/v1/chat/completions", json={"messages": messages, "tools": [WEATHER],
                                                                    "tool_choice": choice, "max_tokens": 2}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == " w0 w1"  # the scripted worker's text
        assert "tool_calls" not in r.json()["choices"][0]["message"]
        deadline = time.monotonic() + 5
        while len(worker.received) < n:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        grammar = worker.received[-1].params.grammar
        assert (grammar is None) == (choice == "none")


def test_a_template_without_tools_gets_them_after_the_last_message(default_model_dir: Path) -> None:
    tok = Tokenizer(default_model_dir)  # SmolLM2's template reads neither tools nor tool_calls
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "1", "content": "sunny"}, {"role": "user", "content": "And Rome?"}]
    choice = parse_tools({"tools": [WEATHER]}, has_grammar=False)
    prompt = render_prompt(tok, history, choice)
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in prompt
    assert "<|im_start|>tool\nsunny" in prompt
    assert f"And Rome?\n---\n{DEFAULT_TOOL_PROMPT}\n{json.dumps([WEATHER])}" in prompt
    assert render_prompt(tok, history[:1], None) == tok.apply_chat_template(history[:1])


def test_the_reader_streams_openai_deltas_and_rebuilds_the_message(lltok: llguidance.LLTokenizer) -> None:
    two = CALL + '\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    pieces = [lltok.decode_str([t]) for t in lltok.tokenize_str(two)]
    reader = ToolCallReader()
    deltas = [d for p in pieces for d in reader.feed(p)] + reader.finish()
    assert all("content" not in d for d in deltas)
    heads = [d["tool_calls"][0] for d in deltas if "id" in d["tool_calls"][0]]
    assert [(h["index"], h["type"], h["function"]["name"]) for h in heads] == [(0, "function", "get_weather"), (1, "function", "get_time")]
    args = ["".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if d["tool_calls"][0]["index"] == i) for i in (0, 1)]
    assert [json.loads(a) for a in args] == [{"city": "Paris", "unit": "C"}, {}]
    assert [c.arguments for c in reader.calls] == args and reader.content == ""
    text = ToolCallReader()
    assert text.feed("<") == [] and text.feed("b>hi") == [{"content": "<b>hi"}] and not text.made_calls
    short = ToolCallReader()
    assert short.feed("<tool") == [] and short.finish() == [{"content": "<tool"}]
