"""LoRA adapters at the gateway: adapter_id and OpenAI's `model` reach the worker, the adapters the
workers announce are listed, unknown ones are refused before anything is queued, and the runtime
load/unload routes (off by default) ask every worker of the model and act on their answers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from common.config import DEFAULT_MODEL_ID
from tests.gateway.harness import GatewayServer, ScriptedWorker


def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _announce(gw: GatewayServer, worker: ScriptedWorker, *adapters: str) -> None:
    worker.adapters = list(adapters)
    worker.heartbeat()
    _until(lambda: gw.ctx.fleet.state.adapters == frozenset(adapters), "the gateway never saw the adapters")


def test_adapter_ids_reach_the_worker_and_are_listed(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    _announce(gateway, worker, "sql", "chat")
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 2, "adapter_id": "sql"}}
    for route in ("/generate", "/"):
        assert httpx.post(f"{gateway.url}{route}", json=body, timeout=10).status_code == 200
    with httpx.stream("POST", f"{gateway.url}/generate_stream", json=body, timeout=10) as r:
        assert r.status_code == 200 and "generated_text" in r.read().decode()
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    answer = httpx.post(f"{gateway.url}/v1/chat/completions", json=chat, timeout=10)
    assert answer.status_code == 200 and answer.json()["model"] == "chat"
    plain = {"model": DEFAULT_MODEL_ID, "prompt": "hi", "max_tokens": 2}
    assert httpx.post(f"{gateway.url}/v1/completions", json=plain, timeout=10).status_code == 200
    assert [r.adapter_id for r in worker.received] == ["sql", "sql", "sql", "chat", ""]

    listed = httpx.get(f"{gateway.url}/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in listed] == [DEFAULT_MODEL_ID, "chat", "sql"]
    assert listed[1] == {"id": "chat", "object": "model", "created": 0, "owned_by": DEFAULT_MODEL_ID,
                         "parent": DEFAULT_MODEL_ID}
    info = httpx.get(f"{gateway.url}/info", timeout=10).json()
    assert info["lora_adapters"] == ["chat", "sql"] and info["workers"][0]["adapters"] == ["sql", "chat"]


def test_unknown_adapters_are_refused_in_each_routes_shape(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    # Without adapters anywhere, OpenAI's `model` is not checked (TGI's behaviour for one model).
    plain = {"model": "gpt-4o", "prompt": "hi", "max_tokens": 2}
    assert httpx.post(f"{gateway.url}/v1/completions", json=plain, timeout=10).status_code == 200
    _announce(gateway, worker, "sql")
    worker.received.clear()
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 2, "adapter_id": "nope"}}
    for route in ("/generate", "/generate_stream", "/"):
        r = httpx.post(f"{gateway.url}{route}", json=body, timeout=10)
        assert r.status_code == 422, route
        assert r.json() == {"error": f"Input validation error: adapter `nope` is not loaded for model "
                                     f"`{DEFAULT_MODEL_ID}` (loaded: `sql`)", "error_type": "validation"}
    for route, extra in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                         ("/v1/completions", {"prompt": "hi"})):
        r = httpx.post(f"{gateway.url}{route}", json={"model": "nope", "max_tokens": 2, **extra}, timeout=10)
        assert r.status_code == 404 and r.json()["error_type"] == "not_found", route
        assert "`nope`" in r.json()["error"] and "`sql`" in r.json()["error"]
    assert worker.received == []


def test_an_adapter_only_some_workers_hold_is_not_served(gateway: GatewayServer, worker: ScriptedWorker,
                                                         redis_url: str, key_prefix: str) -> None:
    # Both workers read the model's one stream: a request of "b" could reach the worker without it.
    second = ScriptedWorker(redis_url, key_prefix, DEFAULT_MODEL_ID, worker_id="wk-second", adapters=["a", "b"]).start()
    try:
        worker.adapters = ["a"]
        worker.heartbeat()
        _until(lambda: len(gateway.ctx.fleet.state.serving) == 2 and gateway.ctx.fleet.state.adapters == {"a"},
               "the gateway never saw both workers")
        body = {"inputs": "hi", "parameters": {"max_new_tokens": 2, "adapter_id": "b"}}
        assert httpx.post(f"{gateway.url}/generate", json=body, timeout=10).status_code == 422
        assert [m["id"] for m in httpx.get(f"{gateway.url}/v1/models", timeout=10).json()["data"]][1:] == ["a"]
    finally:
        second.stop()


def test_runtime_routes_are_off_by_default(gateway: GatewayServer) -> None:
    r = httpx.post(f"{gateway.url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/tmp"}, timeout=10)
    assert r.status_code == 404 and "--allow-runtime-lora-updating" in r.json()["error"]


def test_runtime_load_and_unload_ask_every_worker(make_gateway, worker: ScriptedWorker, redis_url: str,  # type: ignore[no-untyped-def]
                                                  key_prefix: str, tmp_path: Path) -> None:
    second = ScriptedWorker(redis_url, key_prefix, DEFAULT_MODEL_ID, worker_id="wk-second").start()
    try:
        with make_gateway(allow_runtime_lora_updating=True) as gw:
            _until(lambda: len(gw.ctx.fleet.state.serving) == 2, "the gateway never saw both workers")
            load = {"lora_name": "new", "lora_path": str(tmp_path)}
            r = httpx.post(f"{gw.url}/v1/load_lora_adapter", json=load, timeout=30)
            assert (r.status_code, r.text) == (200, "Success: LoRA adapter 'new' added successfully.")
            assert worker.adapters == second.adapters == ["new"]
            recorded = worker.r.hgetall(worker.keys.runtime_adapters(DEFAULT_MODEL_ID))
            assert recorded == {b"new": str(tmp_path).encode()}  # what a worker started later loads
            # The very next request of it is served: the gateway waited until its view showed it.
            body = {"inputs": "hi", "parameters": {"max_new_tokens": 2, "adapter_id": "new"}}
            assert httpx.post(f"{gw.url}/generate", json=body, timeout=10).status_code == 200

            # One worker refuses: 400 with its reason, and the one that loaded it drops it again.
            worker.adapters.append("half")
            worker.heartbeat()
            r = httpx.post(f"{gw.url}/v1/load_lora_adapter", json={"lora_name": "half", "lora_path": str(tmp_path)},
                           timeout=30)
            assert r.status_code == 400 and r.json()["error_type"] == "adapter"
            assert "worker wk-scripted: cannot LoadAdapter half" in r.json()["error"]
            assert "half" not in second.adapters

            for bad in ({"lora_name": "x"}, {"lora_path": "/tmp"}, {"lora_name": "", "lora_path": "/tmp"}, ["x"]):
                r = httpx.post(f"{gw.url}/v1/load_lora_adapter", json=bad, timeout=10)
                assert r.status_code == 422 and r.json()["error_type"] == "validation", bad

            r = httpx.post(f"{gw.url}/v1/unload_lora_adapter", json={"lora_name": "new"}, timeout=30)
            assert (r.status_code, r.text) == (200, "Success: LoRA adapter 'new' removed successfully.")
            assert worker.r.hgetall(worker.keys.runtime_adapters(DEFAULT_MODEL_ID)) == {}
            assert httpx.post(f"{gw.url}/generate", json=body, timeout=10).status_code == 422
            r = httpx.post(f"{gw.url}/v1/unload_lora_adapter", json={"lora_name": "new"}, timeout=30)
            assert r.status_code == 404 and "cannot be found" in r.json()["error"]
    finally:
        second.stop()


def test_runtime_routes_need_the_api_key(make_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with make_gateway(allow_runtime_lora_updating=True, api_key="s3cret") as gw:
        load = {"lora_name": "new", "lora_path": str(tmp_path)}
        assert httpx.post(f"{gw.url}/v1/load_lora_adapter", json=load, timeout=10).status_code == 401
        r = httpx.post(f"{gw.url}/v1/load_lora_adapter", json=load, timeout=30,
                       headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200, r.text
