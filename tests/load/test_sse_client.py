"""The load client's protocol parser against a raw server that splits bytes where TCP may."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from load.apis import Parsed, get_api
from load.sse_client import HTTPStatusError, Target, stream_sse, stream_sse_batches

pytestmark = pytest.mark.timeout(30)



@asynccontextmanager
async def _server(parts: list[bytes], gap: float = 0.02) -> AsyncIterator[Target]:
    """Answers every request with `parts`, written `gap` seconds apart, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(gap)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Target("127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def test_events_read_together_form_one_batch_and_split_ones_are_joined() -> None:
    events = b"".join(b'data:{"n":%d}\n\n' % i for i in range(3))
    split = _chunk(b'id:r:3\ndata:{"n":3}\n\ndata:{"n"') + _chunk(b':4}\n\n')
    parts = [_HEAD + _chunk(events), split[:7], split[7:20], split[20:], _chunk(b"data:[DONE]\n\n") + b"0\r\n\r\n"]
    async with _server(parts) as target:
        batches = [b async for b in stream_sse_batches(target, "/x", b"{}")]
    payloads = [p for _, b in batches for p in b]
    assert payloads == [b'{"n":0}', b'{"n":1}', b'{"n":2}', b'{"n":3}', b'{"n":4}', b"[DONE]"]
    assert [len(b) for _, b in batches][0] == 3  # one socket read, one timestamp for the three
    times = [t for t, _ in batches]
    assert times == sorted(times)


async def test_content_length_and_close_delimited_bodies() -> None:
    body = b'data:{"a":1}\n\ndata:{"a":2}'  # the last event without its blank line still counts
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body)
    async with _server([head + body[:5], body[5:]]) as target:
        got = [p async for _, p in stream_sse(target, "/x", b"{}")]
    assert got == [b'{"a":1}', b'{"a":2}']
    async with _server([b"HTTP/1.1 200 OK\r\n\r\ndata:1\n\n", b"data:2\n\n"]) as target:
        got = [p async for _, p in stream_sse(target, "/x", b"{}")]
    assert got == [b"1", b"2"]


async def test_error_status_raises_with_the_body_and_a_cut_stream_is_an_error() -> None:
    body = json.dumps({"error": "Input validation error", "error_type": "validation"}).encode()
    head = b"HTTP/1.1 422 Unprocessable Entity\r\ncontent-length: %d\r\n\r\n" % len(body)
    async with _server([head, body]) as target:
        with pytest.raises(HTTPStatusError) as info:
            [p async for p in stream_sse(target, "/x", b"{}")]
    assert info.value.status == 422 and info.value.body == body
    async with _server([_HEAD + _chunk(b"data:1\n\n") + b"40\r\ndata:"]) as target:
        with pytest.raises(ConnectionError):
            [p async for p in stream_sse(target, "/x", b"{}")]


def test_tgi_parse_reads_what_a_full_decode_reads() -> None:
    api = get_api("tgi")
    token = {"id": 5, "text": " w", "logprob": -0.5, "special": False}
    details = {"finish_reason": "length", "generated_tokens": 7, "seed": None, "input_length": 3}
    cases = [
        ({"index": 1, "token": token, "generated_text": None, "details": None}, Parsed(1, False)),
        ({"index": 7, "token": token, "generated_text": "all", "details": details}, Parsed(1, True, None, 7)),
        ({"index": 7, "token": token, "generated_text": "all", "details": None}, Parsed(1, True)),
        ({"error": "boom", "error_type": "generation"}, Parsed(0, True, "boom")),
        ({"error": {"message": "nested"}}, Parsed(0, True, "nested")),
        ({"token": None, "generated_text": None}, Parsed(0, False)),
        ({"token": {}, "generated_text": None}, Parsed(0, False)),
    ]
    for event, want in cases:
        assert api.parse(json.dumps(event).encode()) == want, event
    assert api.parse(b"[1, 2]").error is not None and api.parse(b"{nope").error is not None
    assert api.parse(b"[DONE]") == Parsed(0, True)
