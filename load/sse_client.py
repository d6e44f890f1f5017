"""A lean HTTP/1.1 streaming client: POST a JSON body, yield (arrival time, SSE data) per event.

Written on asyncio streams rather than httpx because the load generator shares the machine with
what it measures: at tens of thousands of events per second a general-purpose client's per-chunk
cost would make the client the bottleneck. It speaks just what streaming LLM servers send:
chunked transfer encoding, or a body delimited by Content-Length or by close. One connection per
request (`Connection: close`), so the server's view matches independent clients.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

__all__ = ["HTTPStatusError", "stream_sse", "Target"]

_MAX_LINE = 1 << 20


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
    closes mid-chunk.
    """
    reader, writer = await asyncio.open_connection(target.host, target.port, limit=_MAX_LINE)
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
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        status, headers = await _read_head(reader)
        chunks = _chunked(reader) if headers.get("transfer-encoding", "").lower() == "chunked" \
            else _plain(reader, int(headers["content-length"]) if "content-length" in headers else None)
        if not 200 <= status < 300:
            raise HTTPStatusError(status, b"".join([c async for c in chunks]))
        pending = b""
        async for chunk in chunks:
            now = time.perf_counter()
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.startswith(b"data:"):
                    yield now, line[5:].strip()
        if pending.startswith(b"data:"):
            yield time.perf_counter(), pending[5:].strip()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ConnectionError(f"not an HTTP response: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _chunked(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            return
        data = await reader.readexactly(size + 2)  # the chunk and its CRLF
        yield data[:-2]


async def _plain(reader: asyncio.StreamReader, length: int | None) -> AsyncIterator[bytes]:
    remaining = length
    while remaining is None or remaining > 0:
        data = await reader.read(65536 if remaining is None else min(65536, remaining))
        if not data:
            if remaining:
                raise ConnectionError("connection closed before the body ended")
            return
        if remaining is not None:
            remaining -= len(data)
        yield data
