"""ScheduledBatch -> the device tensors of one forward pass, built on the host and copied once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.batch import ScheduledBatch

__all__ = ["ModelInputs", "build_inputs"]


@dataclass(slots=True)
class ModelInputs:
    input_ids: torch.Tensor  # (T,) int64 device
    positions: torch.Tensor  # (T,) int64 device
    slot_mapping: torch.Tensor  # (T,) int64 device
    block_tables: torch.Tensor  # (B, max_blocks) int32 device
    seq_lens: torch.Tensor  # (B,) int32 device
    query_start_loc: torch.Tensor  # (B + 1,) int32 device
    logits_rows: torch.Tensor  # (N,) int64 device: rows of the hidden state to turn into logits
    sample_rows: list[int]  # batch indices of requests sampling this step (host)
    max_query_len: int


def build_inputs(batch: ScheduledBatch, block_size: int, device: torch.device) -> ModelInputs:
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    seq_lens: list[int] = []
    starts = [0]
    logits_rows: list[int] = []
    sample_rows: list[int] = []
    max_blocks = max((len(r.block_table) for r in batch.requests), default=1)
    tables = torch.zeros((len(batch.requests), max(1, max_blocks)), dtype=torch.int32)
    max_query_len = 0
    for i, req in enumerate(batch.requests):
        n = len(req.token_ids)
        input_ids.extend(req.token_ids)
        pos = range(req.start_pos, req.start_pos + n)
        positions.extend(pos)
        table = req.block_table
        slots.extend(table[p // block_size] * block_size + p % block_size for p in pos)
        seq_lens.append(req.start_pos + n)
        starts.append(starts[-1] + n)
        if req.block_table:
            tables[i, : len(table)] = torch.tensor(table, dtype=torch.int32)
        if req.prefill_logprobs:
            logits_rows.extend(range(starts[i], starts[i + 1]))
        elif req.do_sample:
            logits_rows.append(starts[i + 1] - 1)
        if req.do_sample:
            sample_rows.append(i)
        max_query_len = max(max_query_len, n)
    pin = device.type == "cuda"

    def put(values: list[int] | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        host = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
        if pin:
            host = host.pin_memory()
        return host.to(device, non_blocking=True)

    return ModelInputs(
        input_ids=put(input_ids, torch.int64),
        positions=put(positions, torch.int64),
        slot_mapping=put(slots, torch.int64),
        block_tables=put(tables, torch.int32),
        seq_lens=put(seq_lens, torch.int32),
        query_start_loc=put(starts, torch.int32),
        logits_rows=put(logits_rows, torch.int64),
        sample_rows=sample_rows,
        max_query_len=max_query_len,
    )
