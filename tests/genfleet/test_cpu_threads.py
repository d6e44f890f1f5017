"""A busy neighbour process costs the worker's torch its share of the cores, never a stall.

Each measurement is a child process that starts as a worker does (genfleet.cpu_threads before
torch) and times rounds of a decode step's kind of work: many small parallel ops, each ending at
an OpenMP barrier. With threads spinning at those barriers, one busy process beside a two-thread
worker made its steps 66x slower; with the worker's settings they must stay within a few times
what one thread does alone (spinning threads measured 15-23x here).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import pytest

from genfleet.cpu_threads import openmp_env, prepare_openmp, usable_cores, worker_threads

_ROUNDS = 7
_CHILD = f"""
import json, sys, time
from genfleet.cpu_threads import prepare_openmp
prepare_openmp()
import torch
torch.set_num_threads(int(sys.argv[1]))
x, w = torch.randn(16, 576), torch.randn(1536, 576)
def step():  # ~ a decoder layer's ops, 30 layers
    for _ in range(30):
        y = torch.nn.functional.linear(x, w)
        torch.softmax(y, -1).sum()
step()
times = []
for _ in range({_ROUNDS}):
    started = time.perf_counter()
    step()
    times.append(time.perf_counter() - started)
print(json.dumps(times))
"""


def _median_step(threads: int, env: dict[str, str]) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(threads)], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return statistics.median(json.loads(out.stdout.splitlines()[-1]))


@pytest.fixture
def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}  # the worker's own choice
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return env


def test_the_worker_threads_sleep_when_they_wait_and_user_settings_win() -> None:
    env: dict[str, str] = {}
    prepare_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp_env({"OMP_WAIT_POLICY": "ACTIVE"}, 3) == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}
    assert openmp_env({"OMP_NUM_THREADS": "1"}, 3) == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    assert worker_threads(1) == usable_cores() == len(os.sched_getaffinity(0))


@pytest.mark.skipif(usable_cores() < 2, reason="needs two cores: one thread alone cannot wait at a barrier")
def test_a_busy_neighbour_costs_its_share_not_a_stall(worker_env: dict[str, str]) -> None:
    one_thread = _median_step(1, worker_env)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        beside = _median_step(2, worker_env)
    finally:
        hog.kill()
        hog.wait(timeout=10)
    # Beside one busy process two threads still have a core: about one thread's time, never 66x.
    assert beside < 6 * one_thread, (beside, one_thread)
