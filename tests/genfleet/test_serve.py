"""`genfleet serve` with no Redis given: everything starts, answers, and stops without leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from genfleet.cpu_threads import worker_threads
from genfleet.embedded_redis import free_port
from genfleet.serve import worker_devices
from tests.integration.fleet import wait_healthy
from tests.test_readme import readme_curl_examples


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            child = int(entry.name)
            found |= {child} | _descendants(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and ") Z " not in stat.read_text()


def test_serve_answers_and_sigterm_leaves_no_process(default_model_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "genfleet", "serve", "--port", str(port), "--hostname", "127.0.0.1",
         "--max-batch-total-tokens", "2048", "--key-prefix", "serve-test"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", [proc], timeout=180)
        r = httpx.post(f"http://127.0.0.1:{port}/generate", timeout=60,
                       json={"inputs": "The capital of France is", "parameters": {"max_new_tokens": 3}})
        assert r.status_code == 200 and "Paris" in r.json()["generated_text"]
        # One /metrics for the box: the gateway's series and the worker's engine series.
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "tgi_request_duration_seconds_count 1.0" in metrics
        assert 'tgi_batch_inference_duration_count{method="prefill",worker_id=' in metrics
        assert "genfleet_worker_prefix_hit_tokens_total{worker_id=" in metrics
        # The README's first examples give a first-time user an answer, not an empty string.
        for route, body in readme_curl_examples()[:2]:
            r = httpx.post(f"http://127.0.0.1:{port}{route}", json=body, timeout=300)
            answer = r.json()["choices"][0]["message"]["content"] if "choices" in r.json() else r.json()["generated_text"]
            assert r.status_code == 200 and answer.strip(), (route, r.text)
        children = _descendants(proc.pid)
        assert len(children) >= 3  # redis-compatible server, worker, gateway
        environs = [Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") for pid in children]
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in children]
        worker_env = next(env for env, argv in zip(environs, cmdlines) if b"worker" in argv)
        if "OMP_NUM_THREADS" not in os.environ:
            assert f"OMP_NUM_THREADS={worker_threads(1)}".encode() in worker_env
        if "OMP_WAIT_POLICY" not in os.environ:  # a busy neighbour must not stall its OpenMP barriers
            assert b"OMP_WAIT_POLICY=PASSIVE" in worker_env
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)]


def test_workers_share_the_cores_out(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The cores this process may run on (a container's CPU set), not the machine's.
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert [worker_threads(n) for n in (1, 2, 3)] == [2, 1, 1]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert worker_threads(3) == 5


def test_sharded_workers_get_disjoint_gpus() -> None:
    assert [worker_devices(i, 2, None) for i in range(2)] == ["0,1", "2,3"]
    assert [worker_devices(i, 2, "4,5,6,7") for i in range(2)] == ["4,5", "6,7"]
    assert worker_devices(0, 1, "3") is None  # unsharded workers keep the environment as it is
    with pytest.raises(ValueError, match="2 workers x --num-shard 2 need 4 GPUs; CUDA_VISIBLE_DEVICES names 3"):
        worker_devices(1, 2, "0,1,2")
