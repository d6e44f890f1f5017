"""--stream-partitions: a model's stream split by request id, read in turn by a worker, with every
partition drained and acknowledged; and the per-model worker registry gateways read."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis
from transformers import AutoTokenizer

from common.config import FleetConfig, WorkerConfig
from common.protocol import Finish, GenerateRequest, Token, decode_events, encode
from common.sampling_params import SamplingParams
from common.streams import CONSUMER_GROUP, PRIORITY_LEVELS, REQUEST_FIELD, Keys
from tests.worker.test_worker_loop import ScriptedEngine
from worker.worker import Worker

PARTITIONS = 3


def test_keys_place_partitions_and_continuations() -> None:
    keys = Keys("p", PARTITIONS)
    assert keys.request_stream("m") == Keys("p").request_stream("m") == "p:req:{m}"  # partition 0: the old name
    assert keys.request_stream("m", 1, 2) == "p:req:{m#2}:p1"  # priority 1 of partition 2
    assert [keys.request_stream("m", 0, p) for p in range(PARTITIONS)] == ["p:req:{m}", "p:req:{m#1}", "p:req:{m#2}"]
    assert len(keys.all_request_streams("m")) == PARTITIONS * len(PRIORITY_LEVELS)
    assert keys.dead_letter_stream("m", 2) == "p:dlq:{m#2}"  # same tag as its request streams
    # Every attempt of one request (continuations reuse the id) lands in one partition.
    assert {keys.stream_of("m", "req-42") for _ in range(5)} == {keys.stream_of("m", "req-42")}
    assert len({keys.partition_of(f"r{i}") for i in range(30)}) == PARTITIONS


def test_worker_serves_every_partition(redis_url: str, key_prefix: str, default_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    engine = ScriptedEngine(tokenizer(" a b c d", add_special_tokens=False).input_ids, capacity=8)
    fleet = FleetConfig(model_id="m", redis_url=redis_url, key_prefix=key_prefix, heartbeat_interval=0.2,
                        heartbeat_ttl=1.0, graceful_termination_timeout=5.0, stream_partitions=PARTITIONS)
    worker = Worker(WorkerConfig(fleet=fleet, worker_id="w1"), engine, tokenizer)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix, PARTITIONS)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(keys.gateway_channel("g1"))
        ids = [f"r{i}" for i in range(12)]
        assert {keys.partition_of(r) for r in ids} == set(range(PARTITIONS))  # every partition gets some
        for req_id in ids:
            req = GenerateRequest(req_id, 0, "g1", "m", [1, 2, 3], SamplingParams(max_new_tokens=3))
            client.xadd(keys.stream_of("m", req_id), {REQUEST_FIELD: encode(req)})
        tokens: dict[str, list[int]] = {}
        finished: set[str] = set()
        deadline = time.monotonic() + 20
        while finished != set(ids) and time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.2)
            for event in decode_events(msg["data"]).events if msg else []:
                if isinstance(event, Token):
                    tokens.setdefault(event.req_id, []).append(event.seq)
                elif isinstance(event, Finish):
                    finished.add(event.req_id)
        assert finished == set(ids)
        assert all(tokens[r] == [0, 1, 2] for r in ids), tokens
        for stream in keys.all_request_streams("m"):  # accepted entries are acked and deleted
            assert client.xlen(stream) == 0
            assert client.xpending(stream, CONSUMER_GROUP)["pending"] == 0
        assert client.zscore(keys.worker_registry("m"), "w1") is not None
    finally:
        pubsub.close()
        worker.request_stop()
        thread.join(10)
        assert client.zscore(keys.worker_registry("m"), "w1") is None  # a clean exit leaves the registry
        client.close()
