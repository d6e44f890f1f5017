"""Bounds on request heads, enforced while they arrive: 431 or 408 in TGI's error shape.

uvicorn's httptools protocol reads headers of any size and number (a 100 MB header was read
whole, and answered) for as long as they take. This subclass counts the bytes of a request's head
as they arrive and its header fields as they are parsed, and answers 431 and closes the
connection the moment either passes its bound, before the app sees the request; a head that has
not arrived within its timeout (from its first byte) gets 408. Without httptools uvicorn runs h11, which
bounds the head at h11_max_incomplete_event_size and answers a plain 400 (gateway/server.py sets
it to the same bound).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # uvicorn without httptools
    HttpToolsProtocol = None

__all__ = ["bounded_protocol"]


def bounded_protocol(max_header_bytes: int, max_header_count: int,
                     head_timeout: float) -> type[asyncio.Protocol] | None:
    """uvicorn's httptools protocol with the bounds; None where httptools is not installed."""
    if HttpToolsProtocol is None:
        return None
    bounds = {"max_header_bytes": max_header_bytes, "max_header_count": max_header_count,
              "head_timeout": head_timeout}
    return type("BoundedHttpToolsProtocol", (_BoundedHttpToolsProtocol,), bounds)


class _BoundedHttpToolsProtocol(HttpToolsProtocol or object):  # type: ignore[misc]
    max_header_bytes = 0  # set per gateway by bounded_protocol
    max_header_count = 0
    head_timeout = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between the end of one request and the end of the next's headers
        self._head_bytes = 0  # received while in the head
        self._header_count = 0
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_timer is None:  # the head's first bytes: its clock starts
                self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)
        super().data_received(data)
        if self._in_head and not self._refused and self._head_bytes > self.max_header_bytes:
            self._refuse(f"Request header fields too large: the limit is {self.max_header_bytes} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        head = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if self._header_count > self.max_header_count:
            self._refuse(f"Too many request header fields: the limit is {self.max_header_count}")
        elif head > self.max_header_bytes:
            self._refuse(f"Request header fields too large: the limit is {self.max_header_bytes} bytes")
        else:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self._refused and not self.transport.is_closing():
            self._refuse(f"Request head not received within {self.head_timeout:g} s",
                         b"408 Request Timeout", "request_timeout")

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, message: str, status: bytes = b"431 Request Header Fields Too Large",
                error_type: str = "header_too_large") -> None:
        self._refused = True
        self._stop_head_timer()
        body = json.dumps({"error": message, "error_type": error_type}).encode()
        self.logger.info("refused a request head: %s", message)
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, len(body), body)
        )
        self.transport.close()

