"""bitsandbytes-nf4 / -fp4 on the fly: the quantizer against bitsandbytes' own, and the served
greedy tokens against transformers on the dequantized weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genfleet_kernels import reference as ref
from tests.worker.quant.harness import (
    assert_served_greedy_equals_transformers,
    random_prompts,
    tiny_model,
    on_the_fly,
)


@pytest.mark.parametrize("codebook", ["nf4", "fp4"])
def test_codebooks_and_quantizer_are_bitsandbytes(codebook: str) -> None:
    bnb = pytest.importorskip("bitsandbytes.functional")
    assert bnb.get_4bit_type(codebook, device="cpu").tolist() == list(ref.CODEBOOKS_4BIT[codebook])
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(2))
    theirs, state = bnb.quantize_4bit(w, blocksize=64, quant_type=codebook, compress_statistics=False)
    code = torch.tensor(ref.CODEBOOKS_4BIT[codebook])
    packed, absmax = ref.quantize_4bit(w, code)
    assert torch.equal(absmax.flatten(), state.absmax)
    # The same weights come back (a tie between two codebook values may pick either index).
    torch.testing.assert_close(ref.dequantize_4bit(packed, absmax, code), bnb.dequantize_4bit(theirs, state))


def _bnb_4bit(codebook: str):  # type: ignore[no-untyped-def]
    """The served weight from bitsandbytes' definition: blocks of 64 per row, nearest codebook value."""
    code = torch.tensor(ref.CODEBOOKS_4BIT[codebook])

    def dequantize(w: torch.Tensor) -> torch.Tensor:
        blocks = w.reshape(w.shape[0], -1, 64)
        absmax = blocks.abs().amax(-1, keepdim=True)
        nearest = code[(blocks / absmax).unsqueeze(-1).sub(code).abs().argmin(-1)]
        return (nearest * absmax).reshape(w.shape)

    return dequantize


@pytest.mark.parametrize(("method", "family"), [("bitsandbytes-nf4", "llama"), ("bitsandbytes-fp4", "qwen3")])
def test_4bit_on_the_fly(tmp_path: Path, method: str, family: str) -> None:
    dense = tiny_model(tmp_path, family)
    case = on_the_fly(dense, _bnb_4bit(method.rsplit("-", 1)[1]))
    assert_served_greedy_equals_transformers(case, random_prompts(3, 97), quantize=method)
