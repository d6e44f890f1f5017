"""A lean HTTP/1.1 streaming client: POST a JSON body, get the SSE `data:` payloads as they arrive.

Written as an asyncio Protocol rather than on httpx or asyncio streams because the load generator
shares the machine with what it measures: at tens of thousands of events per second a
general-purpose client's per-chunk cost would make the client the bottleneck. Each read from the
socket is parsed once, in `data_received`, and every event it completed is handed over as one
batch with one arrival time (events that arrive together share their timestamp). It speaks just
what streaming LLM servers send: chunked transfer encoding, or a body delimited by Content-Length
or by close. One connection per request (`Connection: close`), so the server's view matches
independent clients.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

__all__ = ["HTTPStatusError", "stream_sse", "stream_sse_batches", "Target"]

_MAX_HEAD = 1 << 20


class HTTPStatusError(RuntimeError):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}")
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    headers: tuple[tuple[str, str], ...] = ()  # extra request headers (Authorization, ...)


async def stream_sse(target: Target, path: str, body: bytes) -> AsyncIterator[tuple[float, bytes]]:
    """POST `body` to `path` and yield (time.perf_counter() at arrival, payload of a `data:` line).

    Raises HTTPStatusError for a non-2xx answer (with its body), ConnectionError if the server
    closes mid-body.
    """
    batches = stream_sse_batches(target, path, body)
    try:
        async for at, payloads in batches:
            for payload in payloads:
                yield at, payload
    finally:
        await batches.aclose()


async def stream_sse_batches(target: Target, path: str, body: bytes) -> AsyncIterator[tuple[float, list[bytes]]]:
    """As `stream_sse`, but one (arrival time, payloads) per socket read that completed any."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_SSEProtocol, target.host, target.port)
    try:
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {target.host}:{target.port}",
            "Content-Type: application/json",
            "Accept: text/event-stream",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in target.headers),
        ]
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        while True:
            batch = await proto.next_batch()
            if batch is None:
                return
            yield batch
    finally:
        transport.close()


class _SSEProtocol(asyncio.Protocol):
    """Parses the response as it arrives: head, then body framing, then SSE lines."""

    def __init__(self) -> None:
        self._buf = b""  # received, not yet parsed (head or body framing)
        self._line = b""  # the unfinished SSE line
        self._mode = "head"  # head | chunked | length | close | done
        self._remaining = 0  # chunked: bytes left in this chunk (+2 for its CRLF); length: body bytes left
        self._status = 0
        self._error_body: list[bytes] | None = None  # a non-2xx answer's body, collected whole
        self._ready: deque[tuple[float, list[bytes]]] = deque()
        self._failure: BaseException | None = None
        self._finished = False
        self._waiter: asyncio.Future[None] | None = None

    # -- the consumer's side ----------------------------------------------------------------------
    async def next_batch(self) -> tuple[float, list[bytes]] | None:
        while not self._ready:
            if self._failure is not None:
                raise self._failure
            if self._finished:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._ready.popleft()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the transport's side ---------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._mode == "done":
            return
        now = time.perf_counter()
        self._buf += data
        payloads: list[bytes] = []
        try:
            self._parse(payloads)
        except (ValueError, ConnectionError) as exc:
            self._fail(exc if isinstance(exc, ConnectionError) else ConnectionError(f"malformed response: {exc}"))
            return
        if payloads:
            self._ready.append((now, payloads))
        if self._mode == "done":
            self._end()
        if payloads or self._mode == "done":
            self._wake()

    def eof_received(self) -> bool | None:
        self._closed()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._mode != "done":
            self._fail(exc)
        else:
            self._closed()

    def _closed(self) -> None:
        if self._mode == "close":  # the body ends with the connection
            self._mode = "done"
            self._end()
        elif self._mode != "done":
            self._fail(ConnectionError("connection closed before the response ended"))
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None and not self._finished:
            self._failure = exc
            self._mode = "done"
        self._wake()

    def _end(self) -> None:
        if self._error_body is not None:
            self._failure = HTTPStatusError(self._status, b"".join(self._error_body))
            return
        line = self._line
        if line.startswith(b"data:"):  # a last event without its blank line
            self._ready.append((time.perf_counter(), [line[5:].strip()]))
        self._finished = True

    def _parse(self, payloads: list[bytes]) -> None:
        if self._mode == "head":
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > _MAX_HEAD:
                    raise ValueError("response head too long")
                return
            self._head(self._buf[:end].decode("latin-1"))
            self._buf = self._buf[end + 4:]
        buf, pos = self._buf, 0
        while self._mode == "chunked":
            if self._remaining == 0:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol].split(b";", 1)[0].strip(), 16)
                pos = eol + 2
                if size == 0:
                    self._mode = "done"  # trailers, if any, are ignored
                    break
                self._remaining = size + 2
            take = min(self._remaining, len(buf) - pos)
            if take <= 0:
                break
            body_end = min(pos + take, pos + self._remaining - 2)  # the chunk's CRLF is not body
            if body_end > pos:
                self._body(buf[pos:body_end], payloads)
            self._remaining -= take
            pos += take
        if self._mode in ("length", "close"):
            data = buf[pos:] if self._mode == "close" else buf[pos:pos + self._remaining]
            pos += len(data)
            if data:
                self._body(data, payloads)
            if self._mode == "length":
                self._remaining -= len(data)
                if self._remaining <= 0:
                    self._mode = "done"
        self._buf = buf[pos:] if pos < len(buf) else b""

    def _head(self, raw: str) -> None:
        lines = raw.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ConnectionError(f"not an HTTP response: {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        self._status = int(parts[1])
        if not 200 <= self._status < 300:
            self._error_body = []
        if headers.get("transfer-encoding", "").lower() == "chunked":
            self._mode = "chunked"
        elif "content-length" in headers:
            self._mode = "length"
            self._remaining = int(headers["content-length"])
            if self._remaining == 0:
                self._mode = "done"
        else:
            self._mode = "close"

    def _body(self, data: bytes, payloads: list[bytes]) -> None:
        if self._error_body is not None:
            self._error_body.append(data)
            return
        text = self._line + data if self._line else data
        lines = text.split(b"\n")
        self._line = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                payloads.append(line[5:].strip())
