"""Starting a sharded worker: how many ranks, and ranks 1..N-1 as child processes of rank 0.

Each rank is `python -m worker.parallel.rank RANK N INIT_URL <the worker's own flags>`: the same
settings as rank 0 (the command line `genfleet serve` would give a worker), its control pipe on
stdin, a death signal tied to rank 0, and its share of the CPU threads. They meet rank 0 in
torch.distributed on a free loopback port.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

from common.config import WorkerConfig
from worker.parallel.group import ShardGroup, ShardingError, plan_rank

__all__ = ["world_size_of", "check_shardable", "start_ranks"]

log = logging.getLogger("genfleet.worker.parallel")


def world_size_of(config: WorkerConfig, device: torch.device) -> int:
    """--num-shard, or with --sharded every visible GPU; 1 when neither is set."""
    if config.num_shard is None and not config.sharded:
        return 1
    if device.type != "cuda":
        if config.num_shard is None:
            raise ShardingError("--sharded counts the visible GPUs; on CPU give the rank count: --num-shard N")
        return config.num_shard
    visible = torch.cuda.device_count()
    wanted = config.num_shard if config.num_shard is not None else visible
    if wanted > visible:
        raise ShardingError(
            f"--num-shard {wanted} needs {wanted} GPUs; {visible} visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
        )
    return wanted


def check_shardable(config: WorkerConfig, model_dir: Path, world_size: int) -> None:
    """Refuse, before any rank starts, a model or quantization that cannot shard N ways."""
    from worker.models import read_config
    from worker.parallel.layers import refuse_unshardable
    from worker.quant import read_checkpoint_quantization, select_method

    cls, cfg = read_config(model_dir)
    plan_rank(cfg, 0, world_size)
    checkpoint = read_checkpoint_quantization(model_dir)
    refuse_unshardable(select_method(config.quantize, checkpoint, random_weights=config.random_weights), world_size)


def start_ranks(config: WorkerConfig, world_size: int, device: torch.device) -> ShardGroup:
    """Rank 0's side: spawn ranks 1..N-1, join the process group with them, and watch them."""
    from genfleet.embedded_redis import die_with_parent, free_port
    from genfleet.cpu_threads import worker_threads
    from genfleet.serve import child_argv

    init = f"tcp://127.0.0.1:{free_port()}"
    flags = child_argv("worker", config, config.fleet)[4:]
    env = dict(os.environ)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in env:  # `serve` sets it per rank already
        env["OMP_NUM_THREADS"] = str(worker_threads(world_size))
        torch.set_num_threads(worker_threads(world_size))
    ranks = [
        subprocess.Popen(
            [sys.executable, "-m", "worker.parallel.rank", str(rank), str(world_size), init, *flags],
            stdin=subprocess.PIPE, preexec_fn=die_with_parent, env=env,
        )
        for rank in range(1, world_size)
    ]
    group = ShardGroup(0, world_size, init, device, ranks)
    log.info("sharded over %d ranks (%s, %s); ranks 1..%d are pids %s", world_size, group.backend, init,
             world_size - 1, ",".join(str(p.pid) for p in ranks))
    return group
