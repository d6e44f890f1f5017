"""Two models in one fleet: the default model and a tiny random one, one worker each on one Redis,
one gateway. Each route answers with the right model's tokens; an unknown name is refused; a
model whose worker dies is unavailable while the other keeps serving."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import transformers

from tests.integration.fleet import FleetProcesses, start_worker

NEW = 8
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> tuple[Path, list[int]]:
    """A random Llama with the default model's tokenizer, and its greedy continuation of PROMPT."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (default_model_dir / name).exists():
            shutil.copy(default_model_dir / name, path / name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW, do_sample=False, min_new_tokens=NEW)
    return path, out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def fleet(redis_server, tiny_model: tuple[Path, list[int]]) -> Iterator[FleetProcesses]:  # type: ignore[no-untyped-def]
    processes = FleetProcesses(redis_server.url, "mm").start(
        num_workers=1, gateway_args=("--max-input-tokens", "256", "--max-total-tokens", "512"))
    processes.workers.append(start_worker(redis_server.url, "mm", "mm-tiny", "--model-id", str(tiny_model[0])))
    _until(lambda: len(_models(processes.base_url)) == 2, 120, "the tiny model's worker never appeared")
    yield processes
    processes.stop()


def _until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(what)


def _models(base: str) -> list[str]:
    return [m["id"] for m in httpx.get(f"{base}/v1/models", timeout=10).json()["data"]]


def _generate(base: str, model: str | None) -> httpx.Response:
    headers = {"x-model-id": model} if model else {}
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": NEW, "details": True, "decoder_input_details": False}}
    return httpx.post(f"{base}/generate", json=body, headers=headers, timeout=60)


def _ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [t["id"] for t in response.json()["details"]["tokens"]]


def test_each_route_answers_with_its_models_tokens(fleet: FleetProcesses, tiny_model: tuple[Path, list[int]]) -> None:
    tiny_dir, tiny_greedy = tiny_model
    base = fleet.base_url
    default_id = _models(base)[0]
    assert _models(base) == [default_id, str(tiny_dir)]
    tiny_ids = _ids(_generate(base, str(tiny_dir)))
    assert tiny_ids[: len(tiny_greedy)] == tiny_greedy  # transformers' greedy on the same weights
    default_ids = _ids(_generate(base, None))
    assert default_ids == _ids(_generate(base, default_id)) != tiny_ids

    # OpenAI routes route by `model`; the answer names it.
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
    for model in (str(tiny_dir), default_id):
        r = httpx.post(f"{base}/v1/chat/completions", json={**chat, "model": model}, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == model, r.text
    r = httpx.post(f"{base}/v1/completions", json={"model": str(tiny_dir), "prompt": PROMPT, "max_tokens": NEW,
                                                   "temperature": 0}, timeout=60)
    assert r.status_code == 200
    tok = httpx.post(f"{base}/tokenize", json={"inputs": PROMPT}, headers={"x-model-id": str(tiny_dir)}, timeout=10)
    assert tok.status_code == 200 and len(tok.json()) > 0
    info = httpx.get(f"{base}/info", headers={"x-model-id": str(tiny_dir)}, timeout=10).json()
    assert info["model_id"] == str(tiny_dir) and info["live_workers"] == 1 and info["models"] == _models(base)
    assert httpx.get(f"{base}/health", headers={"x-model-id": str(tiny_dir)}, timeout=10).status_code == 200
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert f'genfleet_model_live_workers{{model="{tiny_dir}"}} 1.0' in metrics


def test_an_unknown_model_is_refused_before_anything_is_queued(fleet: FleetProcesses) -> None:
    base = fleet.base_url
    r = _generate(base, "no-such-model")
    assert r.status_code == 404 and r.json()["error_type"] == "not_found", r.text
    assert "no-such-model" in r.json()["error"]
    r = httpx.post(f"{base}/v1/chat/completions", timeout=10,
                   json={"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 404 and "not served" in r.json()["error"]
    # TGI's own examples send "tgi": it means the default model.
    r = httpx.post(f"{base}/v1/chat/completions", timeout=60,
                   json={"model": "tgi", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert r.status_code == 200


def test_a_dead_models_worker_makes_only_that_model_unavailable(fleet: FleetProcesses,
                                                                 tiny_model: tuple[Path, list[int]]) -> None:
    base, tiny = fleet.base_url, str(tiny_model[0])
    worker = fleet.workers[-1]
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    # Its heartbeat expires (TTL 2 s in these fleets): the model leaves /v1/models and is refused.
    _until(lambda: tiny not in _models(base), 20, "the dead model stayed listed")
    assert httpx.get(f"{base}/health", headers={"x-model-id": tiny}, timeout=10).status_code in (404, 503)
    assert _generate(base, tiny).status_code in (404, 503)
    assert _ids(_generate(base, None))
