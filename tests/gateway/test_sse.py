"""SSE framing per API: OpenAI's routes frame events as OpenAI does, TGI's stay byte-exact TGI.

vLLM's benchmark client (`vllm bench serve`, openai backends) parses a stream like this, in
vllm/benchmarks/lib/endpoint_request_func.py (StreamedResponseHandler and
async_request_openai_completions / async_request_openai_chat_completions, read at vLLM commit
02cfb534): it splits the bytes on blank lines, strips each message, skips messages that start
with ":" (keep-alive comments), removes the prefix "data: " — with the space — and json.loads
what is left unless it is "[DONE]". A message framed `data:{...}` therefore fails to parse and
the whole request counts as failed (issue 13.10). `_vllm_messages` is that rule, restated.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.gateway.harness import GatewayServer

pytestmark = pytest.mark.timeout(60)


def _vllm_messages(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for message in raw.decode().split("\n\n"):
        message = message.strip()
        if not message or message.startswith(":"):
            continue
        chunk = message.removeprefix("data: ")
        out.append(chunk if chunk == "[DONE]" else json.loads(chunk))
    return out


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 3}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 3}),
])
def test_openai_streams_parse_with_vllm_benchmark_rule(gateway: GatewayServer, path: str, body: dict) -> None:  # type: ignore[type-arg]
    # What vllm bench serve sends: a stream with usage, and ignore_eos.
    r = httpx.post(f"{gateway.url}{path}", json={**body, "model": "m", "stream": True, "ignore_eos": True,
                                                  "stream_options": {"include_usage": True}}, timeout=10)
    assert r.status_code == 200
    messages = _vllm_messages(r.content)
    assert messages[-1] == "[DONE]"
    chunks = messages[:-1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    texts = [c["choices"][0].get("text", c["choices"][0].get("delta", {}).get("content")) for c in chunks[:3]]
    assert "".join(t or "" for t in texts) == " w0 w1 w2"
    assert all(frame.startswith(b"data: ") for frame in r.content.split(b"\n\n") if frame)


def test_tgi_streams_keep_tgi_framing(gateway: GatewayServer) -> None:
    r = httpx.post(f"{gateway.url}/generate_stream", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}},
                   timeout=10)
    frames = [f for f in r.content.split(b"\n\n") if f]
    assert frames and all(f.startswith(b"id:") and b"\ndata:{" in f for f in frames)
    with pytest.raises(json.JSONDecodeError):
        _vllm_messages(r.content)  # TGI's own framing, which vLLM's openai parser does not take
