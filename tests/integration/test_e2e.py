"""The spine end to end: real Redis, a real gateway and worker process, the real default model."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
import requests

from common.config import DEFAULT_MODEL_ID
from common.streams import Keys
from tests.integration.fleet import FleetProcesses, start_worker

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at",
]
MAX_NEW = 16


@pytest.fixture(scope="module")
def fleet(redis_server, default_model_dir: Path) -> Iterator[FleetProcesses]:  # type: ignore[no-untyped-def]
    processes = FleetProcesses(redis_server.url, "e2e").start(
        num_workers=1, worker_args=("--max-batch-total-tokens", "8192"), gateway_args=("--max-input-tokens", "512", "--max-total-tokens", "1024",
                                     "--max-concurrent-requests", "20")
    )
    yield processes
    processes.stop()


@pytest.fixture(scope="module")
def reference_tokens(default_model_dir: Path) -> dict[str, list[int]]:
    """transformers' greedy generate on the same converted model (float32, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    out: dict[str, list[int]] = {}
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        gen = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False, attention_mask=torch.ones_like(ids))
        out[prompt] = gen[0, ids.shape[1]:].tolist()
    return out


def _generate(base: str, prompt: str, **params: object) -> dict:  # type: ignore[type-arg]
    body = {"inputs": prompt, "parameters": {"max_new_tokens": MAX_NEW, "details": True, **params}}
    r = httpx.post(f"{base}/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _stream(base: str, prompt: str, max_new: int = MAX_NEW) -> tuple[str, list[int], dict]:  # type: ignore[type-arg]
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new, "details": True}}
    texts, ids, last = [], [], {}
    with httpx.stream("POST", f"{base}/generate_stream", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                assert "error" not in event, event
                ids.append(event["token"]["id"])
                if not event["token"]["special"]:
                    texts.append(event["token"]["text"])
                last = event
    return "".join(texts), ids, last


def test_greedy_matches_transformers(fleet: FleetProcesses, reference_tokens: dict[str, list[int]]) -> None:
    # Sent together, so they share engine steps: batching must not change greedy output.
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = dict(zip(PROMPTS, pool.map(lambda p: _generate(fleet.base_url, p), PROMPTS)))
    for prompt, result in results.items():
        got = [t["id"] for t in result["details"]["tokens"]]
        assert got == reference_tokens[prompt], prompt


def test_seed_client_examples_unchanged(fleet: FleetProcesses) -> None:
    # The two client snippets TGI users run today, verbatim apart from the URL.
    result = requests.post(
        f"{fleet.base_url}/generate",
        json={"inputs": "What is the capital of France?", "parameters": {"max_new_tokens": 20}},
        timeout=120,
    ).json()
    assert isinstance(result["generated_text"], str)  # the raw question may well end at once (EOS)

    pieces = []
    with requests.post(
        f"{fleet.base_url}/generate_stream",
        json={"inputs": "What is the capital of France?", "parameters": {"max_new_tokens": 20}},
        stream=True, timeout=120,
    ) as response:
        for line in response.iter_lines():
            if line.startswith(b"data:"):
                token_data = json.loads(line[5:])
                pieces.append(token_data["token"]["text"])
                if token_data.get("details") is not None or token_data.get("generated_text") is not None:
                    break
    assert pieces


def test_stream_equals_non_stream(fleet: FleetProcesses) -> None:
    prompt = PROMPTS[2]
    text, ids, last = _stream(fleet.base_url, prompt)
    full = _generate(fleet.base_url, prompt)
    assert ids == [t["id"] for t in full["details"]["tokens"]]
    assert last["generated_text"] == full["generated_text"]
    assert last["details"]["generated_tokens"] == len(ids)


def test_sixteen_concurrent_streams_equal_sequential(fleet: FleetProcesses) -> None:
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} ({i})" for i in range(16)]
    sequential = {p: _stream(fleet.base_url, p, 8)[1] for p in prompts[:3]}
    with ThreadPoolExecutor(16) as pool:
        concurrent = dict(zip(prompts, pool.map(lambda p: _stream(fleet.base_url, p, 8)[1], prompts)))
    for p, ids in sequential.items():
        assert concurrent[p] == ids
    assert all(len(v) > 0 for v in concurrent.values())


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"{}", 422),
        (json.dumps({"inputs": ""}).encode(), 422),
        (json.dumps({"inputs": 12}).encode(), 422),
        (json.dumps({"inputs": "hi", "parameters": {"max_new_tokens": "ten"}}).encode(), 422),
        (json.dumps({"inputs": "hi", "parameters": {"temperature": -1}}).encode(), 422),
        (json.dumps({"inputs": "word " * 2000, "parameters": {"max_new_tokens": 5}}).encode(), 422),
    ],
)
def test_bad_input_is_refused_before_queueing(fleet: FleetProcesses, body: bytes, status: int) -> None:
    client = redis.Redis.from_url(fleet.redis_url)
    stream = Keys(fleet.prefix).request_stream(DEFAULT_MODEL_ID)
    before = client.xlen(stream)
    r = httpx.post(f"{fleet.base_url}/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    payload = r.json()
    assert set(payload) >= {"error", "error_type"}
    assert client.xlen(stream) == before
    client.close()


def test_overload_gets_429(fleet: FleetProcesses) -> None:
    body = {"inputs": "Count to one hundred:", "parameters": {"max_new_tokens": 12}}

    def post(_: int) -> int:
        return httpx.post(f"{fleet.base_url}/generate", json=body, timeout=180).status_code

    with ThreadPoolExecutor(30) as pool:  # more than the fixture's 20 permits
        codes = list(pool.map(post, range(30)))
    assert 429 in codes and 200 in codes
    assert set(codes) <= {200, 429}


def test_health_turns_503_when_the_worker_stops(redis_server, default_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = FleetProcesses(redis_server.url, "e2e-health").start(
        num_workers=1, worker_args=("--max-batch-total-tokens", "2048"))
    try:
        assert httpx.get(f"{fleet.base_url}/health").status_code == 200
        worker = fleet.workers[0]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        status = 200
        while time.monotonic() < deadline and status == 200:
            status = httpx.get(f"{fleet.base_url}/health").status_code
            time.sleep(0.2)
        assert status == 503
        # A new worker brings it back.
        fleet.workers.append(start_worker(fleet.redis_url, fleet.prefix, "e2e-health-w1", "--max-batch-total-tokens", "2048"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and status != 200:
            status = httpx.get(f"{fleet.base_url}/health").status_code
            time.sleep(0.3)
        assert status == 200
    finally:
        fleet.stop()
