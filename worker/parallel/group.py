"""One rank's membership of a sharded worker: the model's collectives, and rank 0's hold on the rest.

Collectives run on NCCL on CUDA (the decode CUDA graphs capture them, all-reduce included) and
on gloo on CPU, with a timeout (`COLLECTIVE_TIMEOUT`): a rank that hangs inside a step ends the
worker instead of stalling it. A rank that dies is caught sooner: rank 0 polls its ranks'
processes and exits the worker the moment one is gone (the fleet then continues its requests on
other workers), and the other ranks die with rank 0 (a death signal, and their control pipe's end).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from datetime import timedelta

import torch
import torch.distributed as dist

from worker.models.config import ModelConfig
from worker.parallel.control import write_step, write_stop
from worker.parallel.plan import ShardPlan

__all__ = ["ShardGroup", "ShardingError", "plan_rank", "COLLECTIVE_TIMEOUT"]

log = logging.getLogger("genfleet.worker.parallel")

COLLECTIVE_TIMEOUT = timedelta(seconds=120)  # as TGI's process group
_POLL_S = 0.1  # how often rank 0 checks that its ranks live


class ShardingError(ValueError):
    """A --num-shard setting this host or model cannot serve."""


def plan_rank(cfg: ModelConfig, rank: int, world_size: int) -> ShardPlan:
    """Rank `rank`'s ShardPlan, or a ShardingError naming --num-shard and what does not shard."""
    try:
        return ShardPlan.build(cfg, rank, world_size)
    except ValueError as exc:
        raise ShardingError(f"--num-shard {world_size}: {exc}") from exc


class ShardGroup:
    def __init__(self, rank: int, world_size: int, init_method: str, device: torch.device,
                 ranks: list[subprocess.Popen[bytes]] | None = None) -> None:
        """`ranks`: on rank 0, the processes of ranks 1..N-1 (their stdin is their control pipe),
        watched from before the process group forms, so one that fails to start ends the worker."""
        self._ranks = ranks or []
        self._closing = threading.Event()
        if self._ranks:
            threading.Thread(target=self._watch, name="shard-watch", daemon=True).start()
        if device.type == "cuda":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        self.rank = rank
        self.world_size = world_size
        self.device = device  # this rank's device: cuda:<rank> among the visible GPUs, or the CPU
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            self.backend, init_method=init_method, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )

    def plan(self, cfg: ModelConfig) -> ShardPlan:
        return plan_rank(cfg, self.rank, self.world_size)

    # -- collectives (every rank calls each, in the same order) ---------------------------------
    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor

    def gather_logits(self, local: torch.Tensor, vocab_size: int) -> torch.Tensor | None:
        """(N, vocab_per_rank) on each rank -> (N, vocab_size) on rank 0, None elsewhere."""
        local = local.contiguous()
        if self.rank != 0:
            dist.gather(local, None, dst=0)
            return None
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.gather(local, parts, dst=0)
        return torch.cat(parts, dim=1)[:, :vocab_size]  # (N, V): the padding rows' columns cut

    def min_over_ranks(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def share_placeholders(self, input_ids: torch.Tensor) -> None:
        """Rank 0's decode tokens still on its device (overlapped scheduling) reach every rank."""
        dist.broadcast(input_ids, src=0)

    # -- rank 0: driving the others --------------------------------------------------------------
    def send_step(self, header: tuple[int, ...], flat: torch.Tensor, placeholders: bool) -> None:
        for proc in self._ranks:
            write_step(proc.stdin, header, flat, placeholders)  # type: ignore[arg-type]

    def _watch(self) -> None:
        while not self._closing.wait(_POLL_S):
            for rank, proc in enumerate(self._ranks, start=1):
                code = proc.poll()
                if code is not None and not self._closing.is_set():
                    # The main thread may sit in a collective that only the timeout would end.
                    log.error("shard rank %d (pid %d) exited with %s: the worker stops", rank, proc.pid, code)
                    logging.shutdown()
                    os._exit(1)

    def close(self) -> None:
        """Rank 0: stop the other ranks (STOP on their pipes) and wait a little for them."""
        if self._closing.is_set():
            return
        self._closing.set()
        for proc in self._ranks:
            try:
                write_stop(proc.stdin)  # type: ignore[arg-type]
                proc.stdin.close()  # type: ignore[union-attr]
            except (BrokenPipeError, ValueError, OSError):
                pass
        for proc in self._ranks:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if dist.is_initialized():
            dist.destroy_process_group()
