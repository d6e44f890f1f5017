"""A sharded worker is gone as a whole: kill -9 of its rank 0 (the worker process) takes rank 1
with it within seconds (death signal, and the end of rank 1's control pipe), leaving nothing
that holds GPU memory or waits in a collective. (Rank 1 killed: tests/genfleet/test_serve_sharded.py.)"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import redis

from common.streams import Keys
from tests.genfleet.test_serve import _alive, _descendants
from tests.integration.fleet import start_worker


def test_kill_9_of_rank_0_takes_the_other_rank_down(redis_url: str, default_model_dir: Path) -> None:
    prefix, name = f"sf{uuid.uuid4().hex[:6]}", "sharded-w0"
    worker = start_worker(redis_url, prefix, name, "--num-shard", "2", "--max-batch-total-tokens", "1024")
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 180
        while not client.exists(Keys(prefix).worker_heartbeat(name)):  # every rank is up before the first one
            assert worker.poll() is None, f"the sharded worker exited with {worker.returncode}"
            assert time.monotonic() < deadline, "the sharded worker never heartbeat"
            time.sleep(0.2)
        ranks = [pid for pid in _descendants(worker.pid) if b"worker.parallel.rank" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(ranks) == 1, ranks
        worker.kill()
        worker.wait()
        killed = time.monotonic()
        while time.monotonic() < killed + 5 and _alive(ranks[0]):
            time.sleep(0.05)
        assert not _alive(ranks[0]), "rank 1 still runs 5 s after its rank 0 was killed"
        print(f"[num-shard kill -9 rank 0] rank 1 gone {time.monotonic() - killed:.2f}s after")
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
        client.close()
