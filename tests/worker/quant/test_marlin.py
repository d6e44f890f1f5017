"""Marlin-packed checkpoints, packed as IST-DASLab's marlin.Layer.pack does (symmetric 4-bit, zero 8)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.quant.harness import assert_served_greedy_equals_transformers, random_prompts, tiny_model, write_checkpoint
from tests.worker.quant.rtn import Quantized, pack_words, quantize


def _fragment_order() -> list[int]:
    # Marlin's 1024-value shuffle: for each of 32 lanes, two 8-column blocks of its four fragment
    # rows, repeated for four 256-value quarters, then each 8 interleaved as 0 2 4 6 1 3 5 7.
    order = []
    for lane in range(32):
        mine = []
        for block in (0, 1):
            for row in (2 * (lane % 4), 2 * (lane % 4) + 1, 2 * (lane % 4 + 4), 2 * (lane % 4 + 4) + 1):
                mine.append(16 * row + lane // 4 + 8 * block)
        for quarter in range(4):
            order += [v + 256 * quarter for v in mine]
    return [order[8 * (i // 8) + [0, 2, 4, 6, 1, 3, 5, 7][i % 8]] for i in range(1024)]


def pack_marlin(qz: Quantized) -> dict[str, torch.Tensor]:
    w = qz.q.t()  # (K, N), unsigned with the symmetric zero 8
    k, n = w.shape
    tiles = w.reshape(k // 16, 16, n // 16, 16).permute(0, 2, 1, 3).reshape(k // 16, n * 16)
    shuffled = tiles.reshape(-1, 1024)[:, _fragment_order()].reshape(tiles.shape)
    s = qz.scales.t().to(torch.float16)  # (K / G, N)
    if s.shape[0] == 1:
        order = [2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)]
    else:
        order = [i + 8 * j for i in range(8) for j in range(8)]
    s = s.reshape(-1, len(order))[:, order].reshape(s.shape)
    return {"B": pack_words(shuffled, 4), "s": s}


@pytest.mark.parametrize("group_size", [128, -1])
def test_marlin(tmp_path: Path, group_size: int) -> None:
    # Marlin's own shape limits: in_features % 128, out_features % 256.
    dense = tiny_model(tmp_path, "mistral", hidden_size=256, intermediate_size=512, num_attention_heads=2,
                       num_key_value_heads=2, head_dim=128, sliding_window=None)
    config = {"quant_method": "gptq", "bits": 4, "group_size": group_size, "sym": True, "desc_act": False,
              "checkpoint_format": "marlin"}
    ckpt = write_checkpoint(dense, tmp_path, lambda w: quantize(w, 4, group_size, sym=True), pack_marlin, config)
    assert_served_greedy_equals_transformers(ckpt, random_prompts(2, 97), new=12)
