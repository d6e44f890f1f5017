"""OpenAI routes: shapes, streaming with include_usage and [DONE], n > 1, errors, /chat_tokenize."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.gateway.harness import GatewayServer, ScriptedWorker

pytestmark = pytest.mark.timeout(60)

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def _events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    return [frame.removeprefix("data:").removeprefix(" ") for frame in text.split("\n\n")[:-1]]


def test_chat_completion_shape(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={
        "model": "tgi", "messages": MESSAGES, "max_tokens": 2, "temperature": 0, "top_p": 1.0,
        "logprobs": True, "top_logprobs": 1}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tgi" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["message"] == {"role": "assistant", "content": " w0 w1"}
    assert choice["logprobs"]["content"][0] == {
        "token": " w0", "logprob": -0.5, "bytes": [32, 119, 48],
        "top_logprobs": [{"token": " alt0", "logprob": -1.0, "bytes": [32, 97, 108, 116, 48]}]}
    (req,) = worker.received
    prompt = gateway.ctx.tokenizer.apply_chat_template(MESSAGES)
    assert req.input_ids == gateway.ctx.tokenizer.encode(prompt, add_special_tokens=False)
    assert not req.params.do_sample and req.params.top_p == 1.0 and req.params.top_n_tokens == 1
    assert body["usage"] == {"prompt_tokens": len(req.input_ids), "completion_tokens": 2,
                             "total_tokens": len(req.input_ids) + 2}


def test_chat_stream_usage_and_done(gateway: GatewayServer) -> None:
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={
        "messages": MESSAGES, "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}},
        timeout=10)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert [c["choices"][0]["delta"] for c in chunks[:3]] == [
        {"role": "assistant", "content": " w0"}, {"content": " w1"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:3]] == [None, None, "length"]
    assert all(c["usage"] is None for c in chunks[:3])
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["completion_tokens"] == 2
    assert len({c["id"] for c in chunks}) == 1


def test_n_fans_out_with_distinct_seeds(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={
        "messages": MESSAGES, "max_tokens": 1, "n": 3, "seed": 10, "temperature": 0.7}, timeout=10)
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert sorted(req.params.seed for req in worker.received) == [10, 11, 12]
    assert body["usage"]["completion_tokens"] == 3
    assert body["usage"]["prompt_tokens"] == len(worker.received[0].input_ids)


def test_completions_batch_and_stream(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    r = httpx.post(f"{gateway.url}/v1/completions", json={"prompt": ["one", "two"], "max_tokens": 2}, timeout=10)
    body = r.json()
    assert body["object"] == "text_completion"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [
        (0, " w0 w1", "length"), (1, " w0 w1", "length")]
    r = httpx.post(f"{gateway.url}/v1/completions", json={"prompt": "one", "max_tokens": 2, "stream": True},
                   timeout=10)
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert texts == [" w0", " w1", ""]


@pytest.mark.parametrize(("route", "body", "status", "error_type"), [
    ("/v1/chat/completions", {"messages": []}, 422, "validation"),
    ("/v1/chat/completions", {"messages": "hi"}, 422, "validation"),
    ("/v1/chat/completions", {"messages": MESSAGES, "tools": [{"type": "function"}]}, 422, "validation"),
    ("/v1/chat/completions", {"messages": MESSAGES, "response_format": {"type": "xml"}}, 422, "validation"),
    ("/v1/chat/completions", {"messages": MESSAGES, "n": 9}, 422, "validation"),
    ("/v1/chat/completions", {"messages": MESSAGES, "top_p": 0}, 422, "validation"),
    ("/v1/completions", {"prompt": ["a"] * 5}, 422, "batch size exceeded"),
    ("/v1/completions", {"prompt": "a", "suffix": "b"}, 422, "suffix not supported"),
    ("/v1/completions", {"prompt": []}, 422, "validation"),
])
def test_openai_bad_input(gateway: GatewayServer, worker: ScriptedWorker, route: str, body: dict, status: int,
                          error_type: str) -> None:
    r = httpx.post(f"{gateway.url}{route}", json=body, timeout=10)
    assert r.status_code == status, r.text
    assert r.json()["error_type"] == error_type and r.json()["error"]
    assert worker.received == [] and gateway.ctx.permits.used == 0


def test_error_inside_an_openai_stream(gateway: GatewayServer) -> None:
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "an ERROR here"}], "stream": True}, timeout=10)
    assert r.status_code == 200
    (event,) = _events(r.text)
    assert json.loads(event) == {"error": {"message": "Request failed during generation: boom",
                                           "type": "generation", "http_status_code": 424}}


def test_chat_tokenize(gateway: GatewayServer) -> None:
    body = httpx.post(f"{gateway.url}/chat_tokenize", json={"messages": MESSAGES}, timeout=10).json()
    text = gateway.ctx.tokenizer.apply_chat_template(MESSAGES)
    assert body["templated_text"] == text
    assert [t["id"] for t in body["tokenize_response"]] == gateway.ctx.tokenizer.encode(text, add_special_tokens=False)
    assert "".join(t["text"] for t in body["tokenize_response"]) == text


def test_openai_fields_map_onto_the_request(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Look: "},
                                              {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={
        "messages": messages, "max_completion_tokens": 2, "temperature": 0.7, "stop": "END",
        "presence_penalty": 0.5, "frequency_penalty": 0.25, "seed": 3}, timeout=10)
    assert r.status_code == 200, r.text
    p = worker.received[0].params
    assert p.do_sample and p.temperature == 0.7 and p.seed == 3 and p.max_new_tokens == 2
    assert tuple(p.stop) == ("END",) and p.presence_penalty == 0.5 and p.frequency_penalty == 0.25
    prompt = gateway.ctx.tokenizer.decode(worker.received[0].input_ids, skip_special_tokens=False)
    assert "Look: ![](http://x/y.png)" in prompt


def test_chat_template_override_and_cors(make_gateway, worker: ScriptedWorker) -> None:  # type: ignore[no-untyped-def]
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"
    with make_gateway(chat_template=template, cors_allow_origin="http://app.example") as gw:
        body = httpx.post(f"{gw.url}/chat_tokenize", json={"messages": MESSAGES}, timeout=10).json()
        assert body["templated_text"] == "[system] Be brief.\n[user] Hi\n[assistant]"
        r = httpx.options(f"{gw.url}/generate", headers={
            "origin": "http://app.example", "access-control-request-method": "POST"}, timeout=10)
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        r = httpx.options(f"{gw.url}/generate", headers={
            "origin": "http://evil.example", "access-control-request-method": "POST"}, timeout=10)
        assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_vllm_extras_reach_the_worker(gateway: GatewayServer, worker: ScriptedWorker, route: str) -> None:
    # What `vllm bench serve` and vLLM users send beside OpenAI's own fields.
    body = {"max_tokens": 5, "ignore_eos": True, "min_tokens": 3, "top_k": 20, "repetition_penalty": 1.2,
            **({"messages": MESSAGES} if "chat" in route else {"prompt": "Hello"})}
    r = httpx.post(f"{gateway.url}{route}", json=body, timeout=10)
    assert r.status_code == 200, r.text
    (req,) = worker.received
    p = req.params
    assert (p.ignore_eos, p.min_tokens, p.top_k, p.repetition_penalty) == (True, 3, 20, 1.2)


def test_vllm_top_k_minus_one_is_off(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    r = httpx.post(f"{gateway.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "top_k": -1, "temperature": 0},
                   timeout=10)
    assert r.status_code == 200, r.text
    assert worker.received[0].params.top_k == 0 and not worker.received[0].params.do_sample


@pytest.mark.parametrize(("extra", "message"), [
    ({"min_tokens": -1}, "`min_tokens` must be greater than or equal to 0"),
    ({"min_tokens": 9}, "`min_tokens` must be less than or equal to `max_tokens`=5"),
    ({"top_k": -2}, "`top_k` must be -1 (off) or a positive integer"),
    ({"ignore_eos": "yes"}, "`ignore_eos` must be a boolean"),
    ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
])
def test_bad_vllm_extras_are_refused_before_queueing(gateway: GatewayServer, worker: ScriptedWorker,
                                                     extra: dict[str, object], message: str) -> None:
    r = httpx.post(f"{gateway.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 5, **extra}, timeout=10)
    assert r.status_code == 422 and message in r.json()["error"], r.text
    assert r.json()["error_type"] == "validation" and not worker.received
