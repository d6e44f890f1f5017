"""GET /health, /ping, /info, /metrics, /v1/models, POST /tokenize; the no-torch guard."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from common.config import DEFAULT_MODEL_ID
from common.protocol import WorkerInfo, encode
from tests.gateway.harness import GatewayServer, ScriptedWorker

pytestmark = pytest.mark.timeout(60)


def _wait_status(url: str, status: int, timeout: float = 5.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(url, timeout=5)
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_health_follows_workers(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    r = httpx.get(f"{gateway.url}/health", timeout=5)
    assert r.status_code == 200 and r.content == b""
    assert httpx.get(f"{gateway.url}/ping", timeout=5).status_code == 200
    worker.stop()  # heartbeat key deleted
    r = _wait_status(f"{gateway.url}/health", 503)
    assert r.status_code == 503
    assert r.json() == {"error": "unhealthy", "error_type": "healthcheck"}


def test_health_503_when_the_only_worker_drains(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    worker._stop.set()  # stop its heartbeat thread, then announce draining
    for t in worker._threads:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in worker._threads)
    worker.heartbeat(draining=True)
    assert _wait_status(f"{gateway.url}/health", 503).status_code == 503


def test_info_has_tgi_and_fleet_fields(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    info = httpx.get(f"{gateway.url}/info", timeout=5).json()
    for name in ("model_id", "model_sha", "model_pipeline_tag", "max_concurrent_requests", "max_best_of",
                 "max_stop_sequences", "max_input_tokens", "max_total_tokens", "validation_workers",
                 "max_client_batch_size", "router", "version", "sha", "docker_label"):
        assert name in info
    assert info["model_id"] == DEFAULT_MODEL_ID
    assert info["max_input_tokens"] == 200 and info["max_total_tokens"] == 512
    assert info["live_workers"] == 1
    assert info["quantize"] is None and info["workers"][0]["quantize"] is None  # a dense worker
    assert info["speculate"] is None and info["speculation"] is None  # and one that does not speculate
    assert info["workers"][0]["worker_id"] == worker.worker_id
    assert info["workers"][0]["capacity_tokens"] == worker.capacity_tokens


def test_metrics_use_tgi_names(gateway: GatewayServer) -> None:
    httpx.post(f"{gateway.url}/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}, timeout=10)
    httpx.post(f"{gateway.url}/generate", json={"inputs": ""}, timeout=10)
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    samples = {line.split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert "tgi_request_count 2.0" in text
    assert "tgi_request_success 1.0" in text
    assert 'tgi_request_failure{err="validation"} 1.0' in text
    for name in ("tgi_queue_size", "tgi_batch_current_size", "tgi_batch_max_total_tokens",
                 "tgi_request_duration_count", "tgi_request_queue_duration_count",
                 "tgi_request_inference_duration_count", "tgi_request_validation_duration_count",
                 "tgi_request_mean_time_per_token_duration_count", "tgi_request_generated_tokens_count",
                 "tgi_request_input_length_count", "tgi_request_max_new_tokens_count"):
        assert name in samples, name
    assert not any(s.endswith("_total") or "_total{" in s for s in samples if s.startswith("tgi_request_count"))
    assert 'tgi_request_duration_bucket{le="0.00015"}' in text  # TGI's first duration bucket
    assert "genfleet_request_inter_token_latency_count 1.0" in text  # two tokens, one gap
    assert "genfleet_request_time_to_first_token_count 1.0" in text
    assert 'genfleet_fleet_worker_free_kv_tokens{worker_id="wk-scripted"} 4096.0' in text
    assert "genfleet_live_workers 1.0" in text and "genfleet_stream_pending 0.0" in text


def test_models_and_tokenize(gateway: GatewayServer) -> None:
    models = httpx.get(f"{gateway.url}/v1/models", timeout=5).json()
    assert models["object"] == "list" and models["data"][0]["id"] == DEFAULT_MODEL_ID
    toks = httpx.post(f"{gateway.url}/tokenize", json={"inputs": "Hello world"}, timeout=5).json()
    assert [t["text"] for t in toks] == ["Hello", " world"]
    assert toks[1]["start"] == 5 and toks[1]["stop"] == 11
    assert [t["id"] for t in toks] == gateway.ctx.tokenizer.encode("Hello world")


def test_gateway_never_imports_torch(default_model_dir) -> None:  # type: ignore[no-untyped-def]
    code = "import sys, gateway.app, gateway.server\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_gateway_tokenizer_works_where_torch_is_absent(default_model_dir) -> None:  # type: ignore[no-untyped-def]
    # The gateway image has no torch: hide it and build the app's tokenizer and chat prompt.
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "import importlib.util\n"
        "real_find_spec = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n.split('.')[0] == 'torch' else real_find_spec(n, *a)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from gateway.tokenizer import Tokenizer\n"
        f"t = Tokenizer({str(default_model_dir)!r})\n"
        "assert t.encode('Hello world', add_special_tokens=False) == [19556, 905], t.encode('Hello world')\n"
        "assert 'torch' not in sys.modules\n"
        "assert 'Hello' in t.apply_chat_template([{'role': 'user', 'content': 'Hello'}])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_gateway_validates_against_the_workers_limit(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    # The gateway's own limit is 512 (harness); a worker that serves 300 lowers it from its heartbeat.
    worker.max_total_tokens = 300
    worker.heartbeat()
    deadline = time.monotonic() + 10
    while httpx.get(f"{gateway.url}/info").json()["max_total_tokens"] != 300:
        assert time.monotonic() < deadline, "the gateway never read the worker's max_total_tokens"
        time.sleep(0.05)
    assert httpx.get(f"{gateway.url}/info").json()["max_input_tokens"] == 200  # already below 299
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 300}}, timeout=10)
    assert r.status_code == 422 and "must be <= 300" in r.json()["error"]
    assert not worker.received


def test_request_duration_under_tgis_name_and_the_guides_name(gateway: GatewayServer) -> None:
    httpx.post(f"{gateway.url}/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}, timeout=10)
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    assert "tgi_request_duration_count 1.0" in text and "tgi_request_duration_seconds_count 1.0" in text
    assert 'tgi_request_duration_seconds_bucket{le="0.00015"}' in text
    assert "_created" not in text  # nobody graphs them


def test_info_shows_the_speculation_method_and_n(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    now = time.time()
    info = WorkerInfo("speculating", worker.model, 0, 0, 1000, 1000, 512, 8, now, now, speculate=4, speculation="ngram")
    worker.r.set(worker.keys.worker_heartbeat("speculating"), encode(info), ex=30)
    worker.r.zadd(worker.keys.worker_registry(worker.model), {"speculating": now})  # as a worker registers
    deadline = time.monotonic() + 10
    while (got := httpx.get(f"{gateway.url}/info", timeout=5).json())["live_workers"] < 2:
        assert time.monotonic() < deadline, got
        time.sleep(0.05)
    assert got["speculate"] == 4 and got["speculation"] == "ngram"
    row = next(w for w in got["workers"] if w["worker_id"] == "speculating")
    assert row["speculate"] == 4 and row["speculation"] == "ngram"
    worker.r.delete(worker.keys.worker_heartbeat("speculating"))
    worker.r.zrem(worker.keys.worker_registry(worker.model), "speculating")
