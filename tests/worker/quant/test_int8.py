"""int8 weight-only on the fly (`--quantize eetq`, `--quantize bitsandbytes`): served greedy tokens
against transformers on the dequantized weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.quant.harness import (
    assert_served_greedy_equals_transformers,
    random_prompts,
    tiny_model,
    on_the_fly,
)


def int8_per_channel(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel, scale amax / 127 (EETQ's, and LLM.int8's row statistics)."""
    scale = w.abs().amax(1, keepdim=True) / 127
    return torch.round(w / scale).clamp(-127, 127) * scale


@pytest.mark.parametrize("method", ["eetq", "bitsandbytes"])
def test_int8_on_the_fly(tmp_path: Path, method: str) -> None:
    dense = tiny_model(tmp_path, "llama" if method == "eetq" else "mistral")
    case = on_the_fly(dense, int8_per_channel)
    assert_served_greedy_equals_transformers(case, random_prompts(3, 97), quantize=method)
