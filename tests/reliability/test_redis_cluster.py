"""The fleet on a three-primary Redis Cluster (--redis-cluster): two models whose streams live on
different primaries (the default model's in two partitions), gateways' channels on sharded pub/sub, greedy parity with transformers (the
single-Redis spine test's reference), 16 concurrent streams, and kill -9 of a worker mid-stream
with every stream continued to the same tokens."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from common.config import DEFAULT_MODEL_ID
from common.streams import Keys
from genfleet.embedded_redis import RedisBinaryNotFound
from load.redis_topology import LocalCluster, wait_for
from tests.integration.fleet import FleetProcesses
from tests.reliability.harness import StreamResult, run_streams, summarize, worker_infos

PREFIX = "rc"
OTHER_PREFIX = "rc2"  # the second model's fleet: its own gateway and worker ids
MAX_NEW = 12
PROMPTS = [f"Fact {i}: the number {i * 11 % 89} is" for i in range(16)]
WORKER_ARGS = ("--redis-cluster", "--max-batch-total-tokens", "4096")
PARTITIONS = ("--stream-partitions", "2")  # the default model's stream in two slots


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    try:
        topology = LocalCluster(3)
    except RedisBinaryNotFound as exc:
        pytest.skip(str(exc))
    with topology:
        yield topology


def _primary_of(cluster: LocalCluster, key: str) -> int:
    return cluster.node_of_slot(key_slot(key.encode()))


@pytest.fixture(scope="module")
def second_model(cluster: LocalCluster, default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Llama (the default model's tokenizer) in a directory whose name puts its
    stream on another primary than the default model's."""
    import transformers

    taken = _primary_of(cluster, Keys(PREFIX).request_stream(DEFAULT_MODEL_ID))
    root = tmp_path_factory.mktemp("second-model")
    path = next(root / f"tiny{i}" for i in range(100)
                if _primary_of(cluster, Keys(OTHER_PREFIX).request_stream(str(root / f"tiny{i}"))) != taken)
    path.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (default_model_dir / name).exists():
            shutil.copy(default_model_dir / name, path / name)
    transformers.LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2,
    ).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def fleets(cluster: LocalCluster, second_model: str, default_model_dir: Path) -> Iterator[tuple[FleetProcesses, FleetProcesses]]:
    main = FleetProcesses(cluster.url, PREFIX)
    other = FleetProcesses(cluster.url, OTHER_PREFIX)
    try:
        main.start(num_workers=2, worker_args=(*WORKER_ARGS, *PARTITIONS), gateway_args=("--redis-cluster", *PARTITIONS))
        other.start(num_workers=1, worker_args=(*WORKER_ARGS, "--model-id", second_model, "--random-weights"),
                    gateway_args=("--redis-cluster", "--model-id", second_model))
        yield main, other
    finally:
        other.stop()
        main.stop()


def test_models_and_channels_spread_over_the_primaries(cluster: LocalCluster, fleets, second_model: str) -> None:  # type: ignore[no-untyped-def]
    models = [(Keys(PREFIX, 2), DEFAULT_MODEL_ID), (Keys(OTHER_PREFIX), second_model)]
    owners = [_primary_of(cluster, keys.request_stream(model)) for keys, model in models]
    assert owners[0] != owners[1]
    for (keys, model), owner in zip(models, owners):
        # Each stream (and its dead-letter stream, same hash tag) lives on the primary its slot names.
        assert key_slot(keys.dead_letter_stream(model).encode()) == key_slot(keys.request_stream(model).encode())
        for stream in keys.all_request_streams(model):  # every partition's priority levels
            node = redis.Redis(port=cluster.nodes[_primary_of(cluster, stream)].port)
            try:
                assert node.exists(stream) == 1
            finally:
                node.close()
    for fleet in fleets:
        # The gateway listens with SSUBSCRIBE on the shard that owns its channel.
        channel = Keys(fleet.prefix).gateway_channel(f"{fleet.prefix}-g0")
        node = redis.Redis(port=cluster.nodes[_primary_of(cluster, channel)].port)
        try:
            assert node.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] >= 1
        finally:
            node.close()


@pytest.fixture(scope="module")
def reference_tokens(default_model_dir: Path) -> dict[str, list[int]]:
    """transformers' greedy generate on the same converted model (float32, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    out = {}
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        gen = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False, attention_mask=torch.ones_like(ids))
        out[prompt] = gen[0, ids.shape[1]:].tolist()
    return out


def _assert_exact(results: list[StreamResult], reference: dict[str, list[int]]) -> None:
    assert len(results) == len(PROMPTS)
    for r in results:
        assert r.completed, (r.prompt, r.status, r.error_type, r.exception)
        assert r.seqs == list(range(len(r.token_ids))), r.seqs
        assert r.token_ids == reference[r.prompt][:len(r.token_ids)], (r.prompt, r.token_ids)
        assert len(r.token_ids) == len(reference[r.prompt]) or r.finish_reason == "eos_token"


def test_16_concurrent_streams_match_transformers(fleets, reference_tokens: dict[str, list[int]]) -> None:  # type: ignore[no-untyped-def]
    main, other = fleets
    results = run_streams(main.base_url, PROMPTS, MAX_NEW)
    summarize("cluster, 16 streams", results)
    _assert_exact(results, reference_tokens)
    # The second model answers through its own stream, on its own primary.
    tiny = run_streams(other.base_url, PROMPTS[:4], 8)
    assert all(r.completed and len(r.token_ids) >= 1 for r in tiny), tiny


def test_kill_9_worker_mid_stream_continues_every_stream(fleets, reference_tokens: dict[str, list[int]]) -> None:  # type: ignore[no-untyped-def]
    main, _ = fleets
    out: list[StreamResult] = []
    client = threading.Thread(target=lambda: out.extend(run_streams(main.base_url, PROMPTS, MAX_NEW)), daemon=True)
    client.start()
    procs = {f"{PREFIX}-w{i}": p for i, p in enumerate(main.workers)}
    victim: list[str] = []

    def busy() -> bool:
        infos = [w for w in worker_infos(main.redis_url, PREFIX, cluster=True) if w.worker_id in procs and w.running]
        victim.extend(w.worker_id for w in infos[:1])
        return bool(victim)

    wait_for("a worker with streams running", busy, 60)
    time.sleep(0.3)  # some tokens out first
    procs[victim[0]].kill()
    assert procs[victim[0]].wait(5) == -signal.SIGKILL
    client.join(180)
    assert not client.is_alive(), "clients still waiting after 180 s"
    summarize("cluster, kill -9 worker", out)
    _assert_exact(out, reference_tokens)
