"""1,000+ malformed or hostile requests against a real gateway: no 5xx, no hang, still serving."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from common.config import DEFAULT_MODEL_ID
from tests.gateway.harness import GatewayServer, ScriptedWorker, gateway_config, serve_gateway

ROUTES = ["/generate", "/generate_stream", "/", "/v1/chat/completions", "/v1/completions", "/tokenize"]
FIELDS = ["max_new_tokens", "temperature", "top_p", "top_k", "typical_p", "repetition_penalty", "seed",
          "stop", "truncate", "best_of", "top_n_tokens", "details", "do_sample", "frequency_penalty"]
NASTY = [None, True, -1, 0, 10**30, -(10**30), 1e308, -1e-308, "12", "", "\u0000", "\ud800", "é" * 50,
         [], {}, [1, 2], {"a": 1}, float("nan")]


def _bodies(rng: random.Random, n: int) -> Iterator[tuple[str, str, bytes]]:
    for i in range(n):
        kind = i % 10
        route = rng.choice(ROUTES)
        if kind == 0:  # random bytes
            yield "POST", route, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        elif kind == 1:  # truncated JSON
            full = json.dumps({"inputs": "hello", "parameters": {"max_new_tokens": 4}})
            yield "POST", route, full[: rng.randrange(1, len(full) - 1)].encode()
        elif kind == 2:  # deep nesting
            depth = rng.randrange(50, 3000)
            yield "POST", route, ("[" * depth + "]" * depth).encode()
        elif kind == 3:  # a nasty value in a parameter
            value = rng.choice(NASTY)
            body = {"inputs": "hi", "parameters": {rng.choice(FIELDS): value}}
            yield "POST", route, json.dumps(body, allow_nan=True).encode()
        elif kind == 4:  # wrong type for inputs / messages / prompt
            value = rng.choice(NASTY)
            body = {"inputs": value, "messages": value, "prompt": value, "model": value}
            yield "POST", route, json.dumps(body, allow_nan=True).encode()
        elif kind == 5:  # unicode and control characters in the prompt, absurd budget
            text = "".join(chr(rng.choice([0, 7, 0x202E, 0xFEFF, 0x1F600, 0x10FFFF, 0x41])) for _ in range(64))
            body = {"inputs": text, "parameters": {"max_new_tokens": 10**9}}
            yield "POST", route, json.dumps(body).encode()
        elif kind == 6:  # oversized payload (over --payload-limit)
            yield "POST", route, json.dumps({"inputs": "x" * 70_000}).encode()
        elif kind == 7:  # unknown routes and methods
            path = "/" + "".join(rng.choice("abcxyz/%._-") for _ in range(rng.randrange(1, 30)))
            yield rng.choice(["GET", "POST", "PUT", "DELETE"]), path, b"{}"
        elif kind == 8:  # huge number literals
            yield "POST", route, b'{"inputs": "hi", "parameters": {"max_new_tokens": 1' + b"0" * 5000 + b"}}"
        else:  # structurally odd but valid JSON
            yield "POST", route, json.dumps(rng.choice([[], "str", 12, None, {"parameters": []}])).encode()


@pytest.fixture
def gateway(redis_url: str, key_prefix: str) -> Iterator[GatewayServer]:
    worker = ScriptedWorker(redis_url, key_prefix, DEFAULT_MODEL_ID).start()
    try:
        with serve_gateway(gateway_config(redis_url, key_prefix, payload_limit=65_536)) as gw:
            yield gw
    finally:
        worker.stop()


def test_hostile_bodies_never_get_a_5xx(gateway: GatewayServer) -> None:
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for method, path, body in _bodies(random.Random(1234), 1200):
            r = client.request(method, path, content=body, headers={"content-type": "application/json"})
            statuses[r.status_code] += 1
            assert r.status_code < 500, (method, path, body[:200], r.status_code, r.text[:300])
        print(f"hostile bodies: requests=1200 statuses={dict(sorted(statuses.items()))}")
        ok = client.post("/generate", json={"inputs": "still there?", "parameters": {"max_new_tokens": 2}})
        assert ok.status_code == 200 and ok.json()["generated_text"]
        assert client.get("/health").status_code == 200
