"""How many KV blocks a runner's pool holds, and the pool itself (worker/kv_cache.py's tensors).

--max-batch-total-tokens when given; on a GPU, what a warm-up forward of the largest prefill step
leaves of --cuda-memory-fraction; on the CPU a fixed default. An EAGLE-3 draft model's one layer
shares the block ids, so its bytes count in each block. A sharded worker takes its ranks' smallest.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from common.sampling_params import SamplingParams
from worker.batch import ScheduledBatch, ScheduledRequest
from worker.input_builder import build_inputs
from worker.kv_cache import CPU_DEFAULT_TOKENS, KVCache, bytes_per_block
from worker.request import RequestKey

if TYPE_CHECKING:
    from worker.model_runner import ModelRunner

__all__ = ["allocate_kv"]

log = logging.getLogger("genfleet.worker.runner")


def allocate_kv(runner: ModelRunner) -> KVCache:
    """The runner's KV pool: --max-batch-total-tokens, else sized from what a warm-up forward leaves
    free on a GPU, else the CPU default; the smallest over a sharded worker's ranks."""
    cfg = runner.model.cfg  # this rank's KV heads when sharded
    per_block = bytes_per_block(cfg.num_layers, runner.block_size, cfg.num_kv_heads, cfg.head_dim, runner.kv_dtype)
    if runner.draft_model is not None:  # its one layer over the same block ids
        per_block += runner.draft_model.kv_bytes_per_block(runner.block_size, runner.kv_dtype)
    if runner.config.max_batch_total_tokens is not None:
        num_blocks = -(-runner.config.max_batch_total_tokens // runner.block_size)
    elif runner.device.type == "cuda":
        num_blocks = _profile_gpu_blocks(runner, per_block)
    else:
        num_blocks = CPU_DEFAULT_TOKENS // runner.block_size
    if runner.shards is not None:  # one block manager for all ranks: the smallest pool
        num_blocks = runner.shards.min_over_ranks(num_blocks)
    started = time.monotonic()
    kv = KVCache.allocate(
        cfg.num_layers, num_blocks, runner.block_size, cfg.num_kv_heads, cfg.head_dim, runner.kv_dtype, runner.device
    )
    if runner.draft_model is not None:
        proposers = min(runner.config.max_batch_size, runner.config.speculate_max_batch_size)
        runner.draft_model.allocate_kv(num_blocks, runner.block_size, proposers, runner.kv_dtype, runner.device)
    log.info(
        "KV pool: %d blocks x %d tokens = %d tokens, %.2f GiB, allocated in %.2fs",
        num_blocks, runner.block_size, kv.capacity_tokens, num_blocks * per_block / 2**30, time.monotonic() - started,
    )
    if runner.quant is not None and runner.device.type == "cuda" and runner.config.max_batch_total_tokens is None:
        bought = KVCache.blocks_for_gpu(runner._freed_bytes, per_block, 1.0) * runner.block_size
        log.info("quantization %s: the %.2f GiB its weights saved hold ~%d of these KV tokens",
                 runner.quant.name, runner._freed_bytes / 2**30, min(bought, kv.capacity_tokens))
    if runner.kv_dtype != runner.dtype:
        plain = bytes_per_block(cfg.num_layers, runner.block_size, cfg.num_kv_heads, cfg.head_dim, runner.dtype)
        log.info(
            "KV cache %s: %.2fx the tokens of a %s cache in the same memory (%d vs %d tokens in %.2f GiB)",
            runner.config.kv_cache_dtype, plain / per_block, str(runner.dtype).removeprefix("torch."),
            kv.capacity_tokens, num_blocks * per_block // plain * runner.block_size, num_blocks * per_block / 2**30,
        )
    return kv


def _profile_gpu_blocks(runner: ModelRunner, per_block: int) -> int:
    # A warm-up forward of the largest prefill step shows the activation peak.
    tokens = min(runner.config.max_batch_prefill_tokens, runner.model_config.max_position_embeddings)
    blocks = -(-tokens // runner.block_size)
    cfg = runner.model.cfg
    scratch = KVCache.allocate(
        cfg.num_layers, blocks, runner.block_size, cfg.num_kv_heads, cfg.head_dim, runner.kv_dtype, runner.device
    )
    runner.kv = scratch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    warm = ScheduledRequest(RequestKey("warmup", 0), [0] * tokens, 0, list(range(blocks)), True, SamplingParams(max_new_tokens=1))
    # Every rank of a sharded worker runs this same warm-up forward by itself.
    runner.logits(build_inputs(ScheduledBatch(0, [warm], 0, tokens), runner.block_size, runner.device))
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del scratch, runner.kv
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    budget = total * runner.config.cuda_memory_fraction - peak
    headroom = min(free, budget)
    log.info("GPU memory: total %.1f GiB, warm-up peak %.1f GiB, free %.1f GiB", total / 2**30, peak / 2**30, free / 2**30)
    return KVCache.blocks_for_gpu(int(headroom), per_block, 1.0)
