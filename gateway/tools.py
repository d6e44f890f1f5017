"""OpenAI `tools` / `tool_choice` on /v1/chat/completions: the request side.

`parse_tools` reads the tools, `tool_choice` ("none", "auto", "required" or a named function)
and `parallel_tool_calls`; `tool_grammar` writes the Lark grammar that constrains the output to
calls of those functions, each call's arguments to its function's `parameters` schema; `render`
puts the tools in the prompt. A call is written as
`<tool_call>{"name": "<function>", "arguments": {...}}</tool_call>` (the format of Hermes-style
templates, which most tool-trained models use; parallel calls are separated by a newline).
With "auto" the grammar also lets the model answer in plain text (any text that does not start
a call): it really may answer either way, where TGI's "auto" forces a call (TGI issue 2549).

Where the model's template reads `tools`, they go to the template; otherwise they are appended to
the last message after `\\n---\\n` with the `tool_prompt`, as TGI does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.errors import GenfleetError, ValidationError
from gateway.grammar import JSON_OPTIONS, GrammarSpec, closed_schema

if TYPE_CHECKING:
    from gateway.tokenizer import Tokenizer

__all__ = ["ToolError", "ToolChoice", "parse_tools", "tool_grammar", "render_prompt", "CALL_OPEN", "CALL_CLOSE",
           "DEFAULT_TOOL_PROMPT"]

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
DEFAULT_TOOL_PROMPT = (
    "You can call the functions below. To call one, answer with "
    f'{CALL_OPEN}{{"name": <function name>, "arguments": <arguments as a JSON object>}}{CALL_CLOSE}.'
)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # OpenAI's rule for function names


class ToolError(GenfleetError):
    """TGI's 422 `tool_error`: tools the request cannot use (a malformed one is a `validation` 422)."""

    def __init__(self, message: str) -> None:
        super().__init__("tool_error", f"Tool error: {message}")


@dataclass(frozen=True)
class ToolChoice:
    tools: tuple[dict[str, Any], ...]  # the OpenAI tool objects offered to the model
    mode: str  # "auto" (text or a call), "required" (a call); a named choice is "required" over one tool
    parallel: bool  # several calls in one answer
    prompt: str  # TGI's tool_prompt, for templates that do not read `tools`

    @property
    def names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]


def parse_tools(body: dict[str, Any], has_grammar: bool) -> ToolChoice | None:
    """None when no tools are given or tool_choice is "none": the request is plain chat."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None:
        if choice not in (None, "none", "auto"):
            raise ToolError("`tool_choice` needs `tools`")
        return None
    if not isinstance(tools, list) or not tools:
        raise ValidationError("`tools` must be a non-empty list")
    checked = tuple(_tool(t) for t in tools)
    names = [t["function"]["name"] for t in checked]
    if len(set(names)) != len(names):
        raise ValidationError(f"function names must be unique. Given: {names}")
    if choice is None:
        choice = "auto"
    if choice == "none":
        return None
    if has_grammar:
        raise ToolError("Grammar and tools are mutually exclusive")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise ValidationError("`parallel_tool_calls` must be a boolean")
    prompt = body.get("tool_prompt", DEFAULT_TOOL_PROMPT)
    if not isinstance(prompt, str):
        raise ValidationError("`tool_prompt` must be a string")
    if choice in ("auto", "required"):
        return ToolChoice(checked, choice, parallel, prompt)
    fn = choice.get("function") if isinstance(choice, dict) else None
    named = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(named, str) or choice.get("type", "function") != "function":  # type: ignore[union-attr]
        raise ValidationError('`tool_choice` must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}')
    if named not in names:
        raise ToolError(f"Tool with name {named} not found")
    return ToolChoice(tuple(t for t in checked if t["function"]["name"] == named), "required", False, prompt)


def tool_grammar(choice: ToolChoice) -> GrammarSpec:
    """Lark: one call (or several, one per line, when parallel); or, with "auto", plain text too."""
    bodies = []
    for k, tool in enumerate(choice.tools):
        fn = tool["function"]
        schema = closed_schema(fn.get("parameters") or {"type": "object", "properties": {}})
        schema.setdefault("x-guidance", JSON_OPTIONS)
        head = json.dumps(f'{{"name": "{fn["name"]}", "arguments": ')
        bodies.append(f'body_{k}: {head} %json{json.dumps(schema)} "}}"')
    calls = 'call ("\\n" call)*' if choice.parallel else "call"
    start = f"start: {calls} | TEXT" if choice.mode == "auto" else f"start: {calls}"
    lines = [start, f'call: "{CALL_OPEN}" ({" | ".join(f"body_{k}" for k in range(len(bodies)))}) "{CALL_CLOSE}"', *bodies]
    if choice.mode == "auto":
        lines.append(f"TEXT: /(?s:.+)/ & ~/{re.escape(CALL_OPEN)}(?s:.*)/")
    return GrammarSpec("lark", "\n".join(lines) + "\n")


def render_prompt(tokenizer: Tokenizer, messages: list[dict[str, Any]], choice: ToolChoice | None) -> str:
    """The chat prompt, with the tools where the model's template expects them (or TGI's fallback),
    and earlier assistant calls written out where the template does not read `tool_calls`."""
    with_tools = choice is not None
    if not tokenizer.template_reads("tool_calls", tools=with_tools):
        messages = [_calls_as_text(m) if m.get("tool_calls") else m for m in messages]
    if choice is None:
        return tokenizer.apply_chat_template(messages)
    if tokenizer.template_reads("tools", tools=True):
        return tokenizer.apply_chat_template(messages, tools=list(choice.tools))
    last = dict(messages[-1])
    last["content"] = f"{last.get('content') or ''}\n---\n{choice.prompt}\n{json.dumps(list(choice.tools))}"
    return tokenizer.apply_chat_template([*messages[:-1], last])


def _calls_as_text(message: dict[str, Any]) -> dict[str, Any]:
    calls = "\n".join(f'{CALL_OPEN}{{"name": {json.dumps(c["function"]["name"])}, "arguments": {c["function"]["arguments"]}}}{CALL_CLOSE}'
                      for c in message["tool_calls"])
    text = message.get("content") or ""
    return {k: v for k, v in message.items() if k != "tool_calls"} | {"content": f"{text}{calls}"}


def _tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict):
        raise ValidationError('each tool must be {"type": "function", "function": {"name", "description"?, "parameters"?}}')
    fn = tool["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(f"a function name must match [A-Za-z0-9_.-]{{1,64}}. Given: {name!r}")
    params = fn.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise ValidationError(f"the parameters of {name} must be a JSON schema object")
    if fn.get("description") is not None and not isinstance(fn["description"], str):
        raise ValidationError(f"the description of {name} must be a string")
    return {"type": "function", "function": {k: v for k, v in fn.items() if k in ("name", "description", "parameters", "strict")}}
