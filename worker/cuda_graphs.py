"""Decode forward passes captured as CUDA graphs, one per batch-size bucket, replayed each step.

A decode step of B sequences replays the smallest bucket >= B: the step's inputs are copied into
static buffers, the padding rows get slot -1 (store_kv skips them) and a one-token context, and
the first B rows of the static output are the result. Above the largest bucket the runner runs
eagerly. Every bucket shares one memory pool, captured largest first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from worker.attention import AttentionMetadata, PagedAttentionBackend, forward_context
from worker.input_builder import ModelInputs
from worker.kv_cache import KVLayer

if TYPE_CHECKING:
    from worker.model_runner import ModelRunner

__all__ = ["DecodeGraphs", "capture_decode_graphs"]

log = logging.getLogger("genfleet.worker.graphs")


@dataclass(slots=True)
class _Static:
    input_ids: torch.Tensor  # (B_max,) int64 device
    positions: torch.Tensor  # (B_max,) int64 device
    slot_mapping: torch.Tensor  # (B_max,) int64 device; -1 on padding rows
    block_tables: torch.Tensor  # (B_max, max_blocks) int32 device
    seq_lens: torch.Tensor  # (B_max,) int32 device; 1 on padding rows
    query_start_loc: torch.Tensor  # (B_max + 1,) int32 device: always 0..B, one token each


@dataclass(slots=True)
class DecodeGraphs:
    model: torch.nn.Module
    kv_caches: list[KVLayer]
    sizes: tuple[int, ...]  # ascending bucket sizes
    max_blocks: int  # block-table width every graph was captured with
    backend: PagedAttentionBackend  # the runner's attention backend
    static: _Static | None = None
    graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = field(default_factory=dict)
    capture_seconds: float = 0.0
    capture_bytes: int = 0  # device memory held by the graphs' pool after capture

    def capture(self, device: torch.device) -> None:
        largest = self.sizes[-1]
        self.static = _Static(
            input_ids=torch.zeros(largest, dtype=torch.int64, device=device),
            positions=torch.zeros(largest, dtype=torch.int64, device=device),
            slot_mapping=torch.full((largest,), -1, dtype=torch.int64, device=device),
            block_tables=torch.zeros(largest, self.max_blocks, dtype=torch.int32, device=device),
            seq_lens=torch.ones(largest, dtype=torch.int32, device=device),
            query_start_loc=torch.arange(largest + 1, dtype=torch.int32, device=device),
        )
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_reserved(device)
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            self._run(size)  # warm-up: compiles kernels and settles allocator state outside capture
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._run(size)  # (size, hidden)
            self.graphs[size] = (graph, out)
        torch.cuda.synchronize(device)
        self.capture_seconds = time.perf_counter() - started
        self.capture_bytes = torch.cuda.memory_reserved(device) - before
        log.info(
            "captured %d decode CUDA graphs (batch %s) in %.2fs, %.1f MiB",
            len(self.sizes), ",".join(map(str, self.sizes)), self.capture_seconds, self.capture_bytes / 2**20,
        )

    def try_replay(self, inputs: ModelInputs, meta: AttentionMetadata) -> torch.Tensor | None:
        """Hidden states (B, hidden) of a decode step by graph replay, or None to run eagerly."""
        static = self.static
        num = inputs.input_ids.shape[0]
        width = inputs.block_tables.shape[1]
        if static is None or num > self.sizes[-1] or width > self.max_blocks or num != inputs.seq_lens.shape[0]:
            return None
        size = next(s for s in self.sizes if s >= num)
        static.input_ids[:num].copy_(inputs.input_ids)
        static.positions[:num].copy_(inputs.positions)
        static.slot_mapping[:num].copy_(inputs.slot_mapping)
        static.slot_mapping[num:size].fill_(-1)
        static.block_tables[:num, :width].copy_(inputs.block_tables)
        static.seq_lens[:num].copy_(inputs.seq_lens)
        static.seq_lens[num:size].fill_(1)
        graph, out = self.graphs[size]
        graph.replay()
        return out[:num]

    def _run(self, size: int) -> torch.Tensor:
        static = self.static
        assert static is not None
        meta = AttentionMetadata(
            slot_mapping=static.slot_mapping[:size],
            block_tables=static.block_tables[:size],
            seq_lens=static.seq_lens[:size],
            query_start_loc=static.query_start_loc[: size + 1],
            kv_caches=self.kv_caches,
            max_query_len=1,
        )
        with forward_context(meta, self.backend):
            return self.model(static.input_ids[:size], static.positions[:size])  # type: ignore[no-any-return]


def capture_decode_graphs(runner: ModelRunner) -> DecodeGraphs | None:
    """Graphs for the runner's decode buckets (config.cuda_graph_sizes), or None when off or on CPU."""
    sizes = runner.config.cuda_graph_sizes
    if runner.device.type != "cuda" or not sizes:
        return None
    graphs = DecodeGraphs(
        model=runner.model,
        kv_caches=runner.kv.layers,
        sizes=sizes,
        max_blocks=-(-runner.max_model_len // runner.block_size),
        backend=runner.attention,
    )
    with torch.inference_mode():
        graphs.capture(runner.device)
    return graphs
