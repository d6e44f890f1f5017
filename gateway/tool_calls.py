"""OpenAI `tool_calls` from a tool-constrained answer: the response side of gateway/tools.py.

`ToolCallReader` reads a choice's text as it arrives and says what OpenAI's stream would: content
deltas while the answer is text, and for each `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
a first delta with the call's index, id, type and name, then its arguments piece by piece (the
wrapper's own `}` and tags never reach the client). A complete answer is the same reader fed
once: `content` and `calls` are the message's. Text that only begins like a call is held back
until it is clearly one or the other.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.tools import CALL_CLOSE, CALL_OPEN

__all__ = ["ToolCallReader"]

_HEADER = re.compile(r'\{"name": ("(?:[^"\\]|\\.)*"), "arguments": ')
_END = "}" + CALL_CLOSE
_DECODER = json.JSONDecoder()


@dataclass
class _Call:
    id: str
    name: str
    arguments: str = ""


@dataclass
class ToolCallReader:
    text: str = ""  # everything fed so far
    content: str = ""  # the answer's text part (empty once it is calls)
    calls: list[_Call] = field(default_factory=list)
    _mode: str = "undecided"  # "text" or "calls" once the first characters tell
    _pos: int = 0  # calls mode: where the next call (or its separating newline) starts
    _args_at: int = -1  # in a call: where its arguments start (-1: header not read yet)
    _sent: int = 0  # in a call: how far its arguments have been delivered

    @property
    def made_calls(self) -> bool:
        return bool(self.calls)

    def feed(self, piece: str) -> list[dict[str, Any]]:
        """The deltas this piece of text adds: {"content": ...} or {"tool_calls": [...]}."""
        self.text += piece
        if self._mode == "undecided":
            if CALL_OPEN.startswith(self.text):
                return []  # could still be either
            self._mode = "calls" if self.text.startswith(CALL_OPEN) else "text"
            if self._mode == "text":
                return self._content(self.text)
        if self._mode == "text":
            return self._content(piece)
        return self._scan()

    def finish(self) -> list[dict[str, Any]]:
        """What is left once the answer ends: text held back while it looked like a call's start.
        (A call cut off by the budget has had all its arguments delivered already.)"""
        if self._mode != "undecided":
            return []
        self._mode = "text"
        return self._content(self.text)

    def _content(self, text: str) -> list[dict[str, Any]]:
        self.content += text
        return [{"content": text}] if text else []

    def _scan(self) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        text = self.text
        while True:
            if self._args_at < 0:
                start = self._pos + (1 if text.startswith("\n", self._pos) else 0)
                if not text.startswith(CALL_OPEN, start):
                    return deltas
                header = _HEADER.match(text, start + len(CALL_OPEN))
                if header is None:
                    return deltas
                call = _Call(f"call_{uuid.uuid4().hex[:24]}", json.loads(header.group(1)))
                self.calls.append(call)
                self._args_at = self._sent = header.end()
                deltas.append({"tool_calls": [{"index": len(self.calls) - 1, "id": call.id, "type": "function",
                                               "function": {"name": call.name, "arguments": ""}}]})
            try:
                _, end = _DECODER.raw_decode(text, self._args_at)
            except json.JSONDecodeError:  # arguments still arriving: all of it is arguments
                if self._sent < len(text):
                    deltas.append(self._arguments(text[self._sent :]))
                return deltas
            if self._sent < end:
                deltas.append(self._arguments(text[self._sent : end]))
            if not text.startswith(_END, end):
                return deltas  # the closing tag is still arriving
            self._pos, self._args_at = end + len(_END), -1

    def _arguments(self, piece: str) -> dict[str, Any]:
        self._sent += len(piece)
        self.calls[-1].arguments += piece
        return {"tool_calls": [{"index": len(self.calls) - 1, "function": {"arguments": piece}}]}
