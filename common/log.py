"""Structured logging for every process: one line per record, text or JSON, with the request id.

`setup_logging(json_output, level, role)` is called once by each entry point. The request id
travels in a contextvar: the gateway binds it for the life of a request (`bind_request_id`), and
code that handles many requests on one thread (the worker's loops) passes it per record with
`extra={"request_id": ...}`. Either way every line carries it, and since the gateway and the
worker log the same id, `grep` or a log query follows one request across the fleet.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["setup_logging", "request_id_var", "bind_request_id", "JsonFormatter", "TEXT_FORMAT"]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("genfleet_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(role)s %(name)s [%(request_id)s] %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=` and goes to JSON.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# Servers that install their own handlers; they are made to propagate to ours instead.
_FOREIGN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
# Extras that are not data: ours (already top-level fields) and uvicorn's ANSI-coloured duplicate.
_SKIP_EXTRAS = frozenset({"role", "request_id", "color_message"})


@contextlib.contextmanager
def bind_request_id(request_id: str) -> Iterator[None]:
    token = request_id_var.set(request_id)
    try:
        yield
    finally:
        request_id_var.reset(token)


class _ContextFilter(logging.Filter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get() or "-"
        record.role = self.role
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, role, logger, request_id, msg, any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "role": getattr(record, "role", "-"),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in line and key not in _SKIP_EXTRAS:
                line[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup_logging(json_output: bool, level: str, role: str, stream: TextIO | None = None) -> logging.Handler:
    """Route every logger (ours, uvicorn's, libraries') through one handler on the root logger.

    Args:
        json_output: JSON lines (`--json-output`) instead of text.
        level: "debug" | "info" | "warning" | "error".
        role: "gateway" | "worker" | "serve", written on every line.
        stream: where lines go; stderr by default.
    Returns the installed handler (tests read from it; callers may ignore it).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_ContextFilter(role))
    handler.setFormatter(JsonFormatter() if json_output else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        foreign.handlers.clear()
        foreign.setLevel(logging.NOTSET)  # follow the root's level, not one set earlier
        foreign.propagate = True
    return handler
