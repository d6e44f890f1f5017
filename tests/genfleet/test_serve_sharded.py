"""`genfleet serve --num-shard 2 --device cpu` on the default model: the same greedy tokens as an
unsharded worker, and a rank killed with -9 takes its worker (and so the local fleet) down in seconds.

The default model has 9 query heads over 3 KV heads: 5 and 4 query heads a rank, KV heads kept
twice where a rank's heads straddle a group (worker/parallel/plan.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

from common.sampling_params import SamplingParams
from genfleet.embedded_redis import free_port
from tests.genfleet.test_serve import _alive, _descendants
from tests.integration.fleet import wait_healthy
from tests.worker.test_engine_model import NEW, PROMPTS, _engine, _run


@pytest.fixture(scope="module")
def fleet(default_model_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "genfleet", "serve", "--port", str(port), "--hostname", "127.0.0.1", "--device", "cpu",
         "--num-shard", "2", "--key-prefix", "sharded", "--graceful-termination-timeout", "5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, [proc], timeout=180)
        yield base, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_greedy_tokens_through_a_two_rank_fleet_equal_the_unsharded_worker(
    fleet: tuple[str, subprocess.Popen[bytes]], default_model_dir: Path
) -> None:
    base, _ = fleet
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    expected = _run(_engine(default_model_dir), {p: tokenizer(p).input_ids for p in PROMPTS},
                    SamplingParams(max_new_tokens=NEW))
    for prompt in PROMPTS:
        body = {"inputs": prompt, "parameters": {"max_new_tokens": NEW, "details": True}}
        reply = httpx.post(f"{base}/generate", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        got = [t["id"] for t in reply.json()["details"]["tokens"]]
        assert got == expected[prompt], prompt


def test_a_killed_rank_ends_its_worker_within_seconds(fleet: tuple[str, subprocess.Popen[bytes]]) -> None:
    _, proc = fleet
    ranks = [pid for pid in _descendants(proc.pid) if b"worker.parallel.rank" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(ranks) == 1, ranks
    rank0 = int(Path(f"/proc/{ranks[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
    os.kill(ranks[0], signal.SIGKILL)
    killed = time.monotonic()
    deadline = killed + 5
    while time.monotonic() < deadline and _alive(rank0):
        time.sleep(0.05)
    assert not _alive(rank0), "rank 0 still runs 5 s after its rank 1 was killed"
    print(f"[num-shard kill -9] the worker exited {time.monotonic() - killed:.2f}s after its rank 1")
    assert proc.wait(30) == 1  # serve stops the fleet when a worker exits, and says it failed


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> tuple[Path, list[int]]:
    from tests.integration.test_model_families_e2e import _checkpoint

    return _checkpoint("mixtral", tmp_path_factory.mktemp("sharded_moe"), default_model_dir)


def test_a_tiny_mixtral_through_a_two_rank_fleet_gives_transformers_greedy_tokens(
    mixtral: tuple[Path, list[int]]
) -> None:
    # Experts split inside each expert over the two ranks, the router on both, one all-reduce after
    # each MoE block (worker/parallel/plan.py).
    from tests.integration.test_model_families_e2e import MAX_NEW, PROMPT

    path, expected = mixtral
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "genfleet", "serve", "--port", str(port), "--hostname", "127.0.0.1", "--device", "cpu",
         "--num-shard", "2", "--model-id", str(path), "--dtype", "float32", "--max-batch-total-tokens", "2048",
         "--key-prefix", "sharded-moe", "--graceful-termination-timeout", "5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, [proc], timeout=180)
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW, "details": True}}
        reply = httpx.post(f"{base}/generate", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        tokens = [t["id"] for t in reply.json()["details"]["tokens"]]
        assert tokens == expected[: len(tokens)] and tokens
        if reply.json()["details"]["finish_reason"] == "length":
            assert tokens == expected
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
