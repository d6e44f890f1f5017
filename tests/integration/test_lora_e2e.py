"""LoRA adapters through the whole fleet (gateway, Redis, a worker process on the default model):
an adapter preloaded with --lora-adapters and one loaded at run time each answer with transformers
+ peft's merged tokens, by `parameters.adapter_id` and by OpenAI's `model`; an unknown adapter is
refused in each route's shape; the fleet lists its adapters; an unloaded one is refused again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import transformers

from tests.integration.fleet import FleetProcesses
from tests.worker.lora.adapters import ATTENTION, make_adapter

pytest.importorskip("peft")

NEW = 8
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> dict[str, tuple[Path, list[int]]]:
    """Two adapters of the default model and the merged model's greedy tokens for PROMPT ("" = the base)."""
    root = tmp_path_factory.mktemp("lora-e2e")
    tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_dir)
    base = transformers.AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids

    def greedy(model: torch.nn.Module) -> list[int]:
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                 attention_mask=torch.ones_like(ids))
        return out[0, ids.shape[1]:].tolist()  # type: ignore[no-any-return]

    found = {"": (default_model_dir, greedy(base))}
    for name, seed, targets in (("pre", 11, ATTENTION), ("late", 12, ("q_proj", "v_proj", "gate_proj", "down_proj"))):
        merged = make_adapter(base, root / name, seed, targets=targets, scale=0.08)
        found[name] = (root / name, greedy(merged))
        del merged
    return found


@pytest.fixture(scope="module")
def fleet(redis_server, adapters) -> Iterator[FleetProcesses]:  # type: ignore[no-untyped-def]
    processes = FleetProcesses(redis_server.url, "lora").start(
        num_workers=1, worker_args=("--lora-adapters", f"pre={adapters['pre'][0]}", "--dtype", "float32"),
        gateway_args=("--allow-runtime-lora-updating", "--max-total-tokens", "512"))
    yield processes
    processes.stop()


def _generate(base: str, adapter: str | None, route: str = "/generate") -> httpx.Response:
    params: dict[str, object] = {"max_new_tokens": NEW, "details": True, "decoder_input_details": False}
    if adapter is not None:
        params["adapter_id"] = adapter
    return httpx.post(f"{base}{route}", json={"inputs": PROMPT, "parameters": params}, timeout=120)


def _ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [t["id"] for t in response.json()["details"]["tokens"]]


def test_adapters_serve_their_tokens_and_unknown_ones_are_refused(fleet: FleetProcesses, adapters) -> None:  # type: ignore[no-untyped-def]
    base = fleet.base_url
    assert adapters["pre"][1] != adapters[""][1]  # the adapter changes the text
    assert _ids(_generate(base, "pre")) == adapters["pre"][1]
    assert _ids(_generate(base, None)) == adapters[""][1]
    tokenizer = transformers.AutoTokenizer.from_pretrained(adapters[""][0])
    body = {"model": "pre", "prompt": PROMPT, "max_tokens": NEW, "temperature": 0}
    completion = httpx.post(f"{base}/v1/completions", json=body, timeout=120)
    assert completion.status_code == 200, completion.text
    assert completion.json()["model"] == "pre"
    assert completion.json()["choices"][0]["text"] == tokenizer.decode(adapters["pre"][1])

    models = httpx.get(f"{base}/v1/models", timeout=10).json()["data"]
    assert {"id": "pre", "object": "model", "created": 0, "owned_by": models[0]["id"], "parent": models[0]["id"]} in models
    assert httpx.get(f"{base}/info", timeout=10).json()["lora_adapters"] == ["pre"]

    # Unknown: refused before anything is queued, in each route's shape.
    for route in ("/generate", "/generate_stream", "/"):
        refused = _generate(base, "nope", route)
        assert refused.status_code == 422, (route, refused.text)
        assert refused.json()["error_type"] == "validation" and "`nope`" in refused.json()["error"]
    for route, key in (("/v1/chat/completions", "messages"), ("/v1/completions", "prompt")):
        value = [{"role": "user", "content": "hi"}] if key == "messages" else "hi"
        refused = httpx.post(f"{base}{route}", json={"model": "nope", key: value, "max_tokens": 2}, timeout=30)
        assert refused.status_code == 404, (route, refused.text)
        assert refused.json()["error_type"] == "not_found" and "`pre`" in refused.json()["error"]


def test_an_adapter_loaded_at_run_time_serves_its_next_request(fleet: FleetProcesses, adapters) -> None:  # type: ignore[no-untyped-def]
    base = fleet.base_url
    assert _generate(base, "late").status_code == 422
    bad = httpx.post(f"{base}/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": "/nonexistent/x"},
                     timeout=120)
    assert bad.status_code == 400 and bad.json()["error_type"] == "adapter" and "no directory" in bad.json()["error"]
    started = time.monotonic()
    loaded = httpx.post(f"{base}/v1/load_lora_adapter",
                        json={"lora_name": "late", "lora_path": str(adapters["late"][0])}, timeout=120)
    assert loaded.status_code == 200 and "late" in loaded.text, loaded.text
    assert time.monotonic() - started < 60
    assert _ids(_generate(base, "late")) == adapters["late"][1]  # the very next request
    assert _ids(_generate(base, "pre")) == adapters["pre"][1]
    again = httpx.post(f"{base}/v1/load_lora_adapter", json={"lora_name": "late", "lora_path": "/x"}, timeout=60)
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]

    unloaded = httpx.post(f"{base}/v1/unload_lora_adapter", json={"lora_name": "late"}, timeout=60)
    assert unloaded.status_code == 200, unloaded.text
    assert _generate(base, "late").status_code == 422
    assert httpx.post(f"{base}/v1/unload_lora_adapter", json={"lora_name": "late"}, timeout=60).status_code == 404
