"""The worker process's side of adapters against a real Redis: a request of an adapter it does not
hold is refused, LoadAdapter / UnloadAdapter on the model's control channel are answered on the
gateway's channel and change what the heartbeat announces, and the next request is served."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from transformers import AutoTokenizer

from common.config import FleetConfig, WorkerConfig
from common.protocol import Accepted, Error, Finish, GenerateRequest, LoadAdapter, UnloadAdapter, decode_events, \
    decode_worker_info, encode
from common.sampling_params import SamplingParams
from common.streams import REQUEST_FIELD, Keys
from tests.worker.lora.adapters import make_adapter
from tests.worker.test_model_runner import _tiny_llama
from tests.worker.test_worker_loop import ScriptedEngine
from worker.lora.control import AdapterControl
from worker.model_runner import ModelRunner
from worker.worker import Worker

pytest.importorskip("peft")


def _events(pubsub, want: int, timeout: float = 15.0) -> list[object]:  # type: ignore[no-untyped-def]
    got: list[object] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.2)
        if msg and msg["type"] == "message":
            got += decode_events(msg["data"]).events
    return got


def test_adapters_are_admitted_loaded_and_unloaded_over_redis(redis_url: str, key_prefix: str, tmp_path: Path,
                                                             default_model_dir: Path) -> None:
    path, base = _tiny_llama(tmp_path)
    make_adapter(base, tmp_path / "x", 3)
    runner = ModelRunner(WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=256), path)
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = WorkerConfig(fleet=FleetConfig(model_id="m", redis_url=redis_url, key_prefix=key_prefix,
                                            heartbeat_interval=0.2, heartbeat_ttl=1.0), worker_id="w9")
    worker = Worker(config, ScriptedEngine([5, 6, 7]), tokenizer, adapters=AdapterControl(runner.adapters))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.gateway_channel("g1"))

    def send(req_id: str, adapter: str) -> None:
        req = GenerateRequest(req_id, 0, "g1", "m", [1, 2, 3], SamplingParams(max_new_tokens=2), adapter_id=adapter)
        client.xadd(keys.request_stream("m"), {REQUEST_FIELD: encode(req)})

    def announced() -> list[str]:
        raw = client.get(keys.worker_heartbeat("w9"))
        return decode_worker_info(raw).adapters if raw else []

    try:
        send("r1", "x")
        first = _events(pubsub, 2)
        assert isinstance(first[0], Accepted) and isinstance(first[1], Error)
        assert first[1].error_type == "validation" and "adapter `x` is not loaded" in first[1].message

        client.publish(keys.control_channel("m"), encode(LoadAdapter("x", str(tmp_path / "x"), "g1", "load-1")))
        assert _events(pubsub, 1) == [Accepted("load-1", 0, "w9")]
        assert announced() == ["x"]  # heart-beaten before the answer
        send("r2", "x")
        served = _events(pubsub, 4)
        assert isinstance(served[-1], Finish) and served[-1].req_id == "r2"

        client.publish(keys.control_channel("m"), encode(UnloadAdapter("x", "g1", "unload-1")))
        assert _events(pubsub, 1) == [Accepted("unload-1", 0, "w9")]
        assert announced() == [] and runner.adapters is not None and runner.adapters.ids == ()
    finally:
        pubsub.close()
        client.close()
        worker.request_stop()
        thread.join(10)
    assert not thread.is_alive()
