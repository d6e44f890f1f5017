"""POST /generate, /generate_stream and /: TGI's shapes, SSE framing, headers, the Redis protocol."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.gateway.harness import GatewayServer, ScriptedWorker

pytestmark = pytest.mark.timeout(60)


def test_generate_shape_and_wire_request(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    r = httpx.post(f"{gateway.url}/generate", json={
        "inputs": "Hello there", "parameters": {"max_new_tokens": 3, "details": True, "top_n_tokens": 2}}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["generated_text"] == " w0 w1 w2"
    d = body["details"]
    assert d["finish_reason"] == "length" and d["generated_tokens"] == 3 and d["seed"] is None
    assert d["prefill"] == []
    assert d["tokens"] == [{"id": 1000 + i, "text": f" w{i}", "logprob": -0.5, "special": False} for i in range(3)]
    assert [len(t) for t in d["top_tokens"]] == [2, 2, 2]
    for h in ("x-compute-type", "x-total-time", "x-validation-time", "x-queue-time", "x-inference-time",
              "x-time-per-token", "x-request-id"):
        assert h in r.headers
    assert r.headers["x-prompt-tokens"] == str(len(gateway.ctx.tokenizer.encode("Hello there")))
    assert r.headers["x-generated-tokens"] == "3"
    (req,) = worker.received
    assert req.gateway_id == gateway.config.gateway_id and req.attempt == 0
    assert req.input_ids == gateway.ctx.tokenizer.encode("Hello there")
    assert req.params.max_new_tokens == 3 and not req.params.do_sample and req.params.top_n_tokens == 2


def test_generate_without_details_and_full_text(gateway: GatewayServer) -> None:
    r = httpx.post(f"{gateway.url}/generate", json={
        "inputs": "Hi", "parameters": {"max_new_tokens": 2, "return_full_text": True}}, timeout=10)
    assert r.json() == {"generated_text": "Hi w0 w1"}


def test_default_max_new_tokens_and_random_seed(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    # No `parameters` at all: TGI samples, and max_new_tokens fills the total budget.
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": "Hi"}, timeout=20)
    assert r.status_code == 200
    (req,) = worker.received
    assert req.params.max_new_tokens == 512 - len(req.input_ids)
    assert req.params.do_sample and req.params.seed is not None
    r = httpx.post(f"{gateway.url}/generate", json={
        "inputs": "Hi", "parameters": {"max_new_tokens": 1, "do_sample": True, "details": True}}, timeout=10)
    assert r.json()["details"]["seed"] == worker.received[-1].params.seed is not None


def test_compat_route_returns_a_list(gateway: GatewayServer) -> None:
    r = httpx.post(f"{gateway.url}/", json={"inputs": "Hi", "parameters": {"max_new_tokens": 1}}, timeout=10)
    assert r.json() == [{"generated_text": " w0"}]
    r = httpx.post(f"{gateway.url}/", json={"inputs": "Hi", "stream": True, "parameters": {"max_new_tokens": 1}},
                   timeout=10)
    assert r.headers["content-type"].startswith("text/event-stream")


def test_stream_bytes_exact(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    r = httpx.post(f"{gateway.url}/generate_stream", json={
        "inputs": "Hi", "parameters": {"max_new_tokens": 2, "details": True, "seed": 7, "do_sample": True}},
        timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-accel-buffering"] == "no"
    rid = worker.received[0].req_id
    n_in = len(worker.received[0].input_ids)
    expected = (
        f'id:{rid}:0\ndata:{{"index":1,"token":{{"id":1000,"text":" w0","logprob":-0.5,"special":false}},'
        f'"generated_text":null,"details":null}}\n\n'
        f'id:{rid}:1\ndata:{{"index":2,"token":{{"id":1001,"text":" w1","logprob":-0.5,"special":false}},'
        f'"generated_text":" w0 w1","details":{{"finish_reason":"length","generated_tokens":2,"seed":7,'
        f'"input_length":{n_in}}}}}\n\n'
    )
    assert r.text == expected


def test_stream_stop_sequence_and_top_tokens(gateway: GatewayServer) -> None:
    with httpx.stream("POST", f"{gateway.url}/generate_stream", json={
            "inputs": "please STOP", "parameters": {"max_new_tokens": 9, "details": True, "top_n_tokens": 1}},
            timeout=10) as r:
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    assert len(events) == 2
    assert events[0]["top_tokens"] == [{"id": 2000, "text": " alt0", "logprob": -1.0, "special": False}]
    assert events[-1]["details"]["finish_reason"] == "stop_sequence"


def test_worker_error_as_tgi_sends_it(gateway: GatewayServer) -> None:
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": "an ERROR here"}, timeout=10)
    assert r.status_code == 424
    assert r.json() == {"error": "Request failed during generation: boom", "error_type": "generation"}
    r = httpx.post(f"{gateway.url}/generate_stream", json={"inputs": "an ERROR here"}, timeout=10)
    assert r.status_code == 200
    assert r.text == 'data:{"error":"Request failed during generation: boom","error_type":"generation"}\n\n'


def test_a_gateway_taken_for_dead_carries_on(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    # The worker dropped attempt 0 because this gateway's heartbeat had expired (it was stalled):
    # the client still gets its whole answer, from attempt 1.
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": "all GONE", "parameters": {"max_new_tokens": 3}},
                   timeout=10)
    assert r.status_code == 200 and r.json()["generated_text"] == " w0 w1 w2"
    assert [q.attempt for q in worker.received if q.req_id == worker.received[-1].req_id] == [0, 1]


def test_client_disconnect_cancels_on_owner(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    with httpx.stream("POST", f"{gateway.url}/generate_stream", json={
            "inputs": "go SLOW", "parameters": {"max_new_tokens": 50}}, timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break
    deadline = time.monotonic() + 5
    while not worker.cancels and time.monotonic() < deadline:
        time.sleep(0.05)
    (cancel,) = worker.cancels
    assert cancel.req_id == worker.received[0].req_id and cancel.attempt == 0
    deadline = time.monotonic() + 5
    while gateway.ctx.permits.used and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.ctx.permits.used == 0 and gateway.ctx.queue_client.in_flight == 0


def test_best_of_picks_one_and_lists_the_others(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": "Hi", "parameters": {
        "max_new_tokens": 2, "best_of": 2, "do_sample": True, "details": True}}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["generated_text"] == " w0 w1"
    assert len(body["details"]["best_of_sequences"]) == 1
    seeds = {req.params.seed for req in worker.received}
    assert len(worker.received) == 2 and len(seeds) == 2


def test_decoder_input_details(make_gateway, worker: ScriptedWorker) -> None:  # type: ignore[no-untyped-def]
    body = {"inputs": "Hi there", "parameters": {"max_new_tokens": 1, "decoder_input_details": True}}
    with make_gateway() as gw:
        r = httpx.post(f"{gw.url}/generate", json=body, timeout=10)
        assert r.status_code == 422 and "--enable-prefill-logprobs" in r.json()["error"]
    with make_gateway(enable_prefill_logprobs=True) as gw:
        r = httpx.post(f"{gw.url}/generate", json=body, timeout=10)
        assert r.status_code == 200, r.text
        ids = gw.ctx.tokenizer.encode("Hi there")
        assert r.json()["details"]["prefill"] == [{"id": i, "text": f"p{i}", "logprob": -0.25} for i in ids]
        assert worker.received[-1].params.prefill_logprobs


def test_parameters_reach_the_worker(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": "Hi", "parameters": {
        "max_new_tokens": 2, "temperature": 0.5, "top_k": 7, "top_p": 0.9, "typical_p": 0.8,
        "repetition_penalty": 1.2, "frequency_penalty": 0.3, "stop": ["\n\n", "END"], "seed": 5}}, timeout=10)
    assert r.status_code == 200, r.text
    p = worker.received[0].params
    assert p.do_sample and p.seed == 5 and p.max_new_tokens == 2
    assert (p.temperature, p.top_k, p.top_p, p.typical_p) == (0.5, 7, 0.9, 0.8)
    assert (p.repetition_penalty, p.frequency_penalty) == (1.2, 0.3)
    assert tuple(p.stop) == ("\n\n", "END")
