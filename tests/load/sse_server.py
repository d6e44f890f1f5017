"""A tiny streaming server on loopback that frames events as TGI and OpenAI-compatible servers do.

Each request streams `max_new_tokens` tokens, one event per token, `delay` seconds apart. A prompt
containing FAIL gets a 422 with TGI's error body; one containing MIDERR gets an error event after
its tokens, as TGI reports errors inside a 200 stream.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def build_app(delay: float) -> Starlette:
    def refuse(prompt: str) -> Response | None:
        if "FAIL" in prompt:
            return JSONResponse({"error": "Input validation error: refused", "error_type": "validation"}, 422)
        return None

    async def generate_stream(request: Request) -> Response:
        body = await request.json()
        prompt, n = body["inputs"], body["parameters"]["max_new_tokens"]

        async def events() -> AsyncIterator[str]:
            text = ""
            for i in range(n):
                await asyncio.sleep(delay)
                piece = f" w{i}"
                text += piece
                last = i == n - 1
                details = {"finish_reason": "length", "generated_tokens": n, "seed": None, "input_length": 3}
                event = {"index": i + 1, "token": {"id": 100 + i, "text": piece, "logprob": -0.1, "special": False},
                         "generated_text": text if last and "MIDERR" not in prompt else None,
                         "details": details if last and "MIDERR" not in prompt else None}
                yield "data:" + json.dumps(event) + "\n\n"
            if "MIDERR" in prompt:
                yield 'data:{"error":"Request failed during generation","error_type":"generation"}\n\n'

        return refuse(prompt) or StreamingResponse(events(), media_type="text/event-stream")

    async def completions(request: Request) -> Response:
        body = await request.json()
        chat = "messages" in body
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        n = body["max_tokens"]

        async def events() -> AsyncIterator[str]:
            for i in range(n):
                await asyncio.sleep(delay)
                choice = ({"index": 0, "delta": {"role": "assistant", "content": f" w{i}"}, "finish_reason": None}
                          if chat else {"index": 0, "text": f" w{i}", "finish_reason": None})
                yield "data: " + json.dumps({"id": "c1", "object": "x", "created": int(time.time()),
                                             "model": body["model"], "choices": [choice]}) + "\n\n"
            usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}
            yield "data: " + json.dumps({"id": "c1", "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return refuse(prompt) or StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[
        Route("/generate_stream", generate_stream, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", completions, methods=["POST"]),
    ])


@contextmanager
def serving(delay: float = 0.002) -> Iterator[int]:
    """Run the app on a free loopback port in a thread; yields the port."""
    config = uvicorn.Config(build_app(delay), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "test server did not start"
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
