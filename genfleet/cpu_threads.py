"""How many CPU threads a worker's torch runs, and how its OpenMP threads wait: chosen before torch loads.

A decode step on the CPU is thousands of small parallel ops, each ending at a barrier where every
OpenMP thread must arrive. By default GNU OpenMP spins at that barrier before it sleeps, so on a
machine where a neighbour process keeps a core busy, the spinning threads and the neighbour share
the cores, the thread that the op waits for is descheduled, and every op waits a scheduler
timeslice for it: a SmolLM2 decode step went from 38 ms to 2.5 s beside one busy process.
OMP_WAIT_POLICY=PASSIVE makes a waiting thread sleep at once, so the kernel wakes it as soon as
there is work and a neighbour costs the worker about its share of the cores (load/bench_cpu_threads.py
measures it). libgomp reads the variable when torch loads it, so the worker's process sets it
first (genfleet/cli.py); a value the user set is kept, as is OMP_NUM_THREADS.

Threads: the cores this process may run on (sched_getaffinity: a container's or taskset's CPU set,
not the machine's), shared out among the worker processes that `genfleet serve` starts.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

__all__ = ["usable_cores", "worker_threads", "openmp_env", "prepare_openmp"]

WAIT_POLICY = "PASSIVE"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this platform (macOS)
        return os.cpu_count() or 1


def worker_threads(num_processes: int) -> int:
    """CPU threads per worker process (each rank of a sharded worker counts as one): the usable
    cores shared out. Each worker's torch would otherwise start one thread per core, and N workers'
    threads oversubscribe the cores: every parallel op then waits at its barrier for a descheduled
    thread (a decode step of 3 requests measured 2.5x slower with 2 threads than with 1 on a loaded
    2-core machine)."""
    return max(1, usable_cores() // num_processes)


def openmp_env(environ: MutableMapping[str, str], threads: int) -> MutableMapping[str, str]:
    """`environ` with a child worker's OpenMP settings added where the user set none; returns it."""
    environ.setdefault("OMP_NUM_THREADS", str(threads))  # torch's intra-op threads
    environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    return environ


def prepare_openmp(environ: MutableMapping[str, str] | None = None) -> None:
    """Before torch is imported in a worker's process: threads that wait sleep (the user's setting wins)."""
    (os.environ if environ is None else environ).setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
