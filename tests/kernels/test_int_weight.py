"""Integer weight-only kernels against kernels/reference.py: 4 and 8 bits, groups, tails, bias, split K."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from tests.kernels.conftest import ON_GPU, assert_close

pytest.importorskip("triton")

from kernels.int_weight_dequant import int_weight_dequant  # noqa: E402
from kernels.int_weight_gemm import int_weight_gemm  # noqa: E402
from kernels.int_weight_gemv import int_weight_gemv  # noqa: E402


def _layout(n: int, k: int, group: int, bits: int, device: torch.device, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    groups = -(-k // group)
    q = torch.randint(0, 2**bits, (n, k), generator=g)
    qweight = reference.pack_int32(q, bits).t().contiguous().to(device)  # (K / P, N)
    scales = (torch.rand(groups, n, generator=g) * 0.02 + 0.001).half().to(device)
    zeros = torch.randint(0, 2**bits, (groups, n), generator=g).half().to(device)
    return qweight, scales, zeros


SHAPES = [(8, 64, 32, 4), (40, 128, 64, 4), (24, 256, 256, 4), (16, 128, 64, 8), (33, 192, 192, 8)]
if ON_GPU:
    SHAPES += [(6144, 4096, 128, 4), (4096, 14336, 64, 4)]


@pytest.mark.parametrize(("n", "k", "group", "bits"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_gemm_dequant_match_the_reference(n: int, k: int, group: int, bits: int, dtype: torch.dtype,
                                               device: torch.device) -> None:
    qweight, scales, zeros = _layout(n, k, group, bits, device)
    bias = torch.randn(n).to(device, dtype)
    gen = torch.Generator().manual_seed(1)
    per = 32 // bits
    block_k = min(group, 64)  # a tile never straddles groups
    dense = reference.dequantize_int_weight(qweight, scales, zeros, group, bits)  # (N, K)
    got = int_weight_dequant(qweight, scales, zeros, group, bits, dtype, block_n=16, block_k=block_k)
    assert_close(got.t(), dense, dtype)
    for rows in (1, 3, 17):
        x = torch.randn(rows, k, generator=gen).to(device, dtype)
        want = reference.int_weight_linear(x.float(), qweight, scales, zeros, group, bits, None, bias.float())
        scale = float(want.abs().max()) + 1.0
        for split_k in (1, 2):
            got = int_weight_gemm(x, qweight, scales, zeros, group, bits, bias, block_m=16, block_n=16,
                                  block_k=block_k, split_k=split_k)
            assert got.dtype == dtype and got.shape == (rows, n)
            assert_close(got / scale, want / scale, dtype, 4)
            if rows == 1:  # a tile inside one group, and one across groups
                for block_w in (block_k // per, 2 * k // per if k // per <= 32 else 32):
                    got = int_weight_gemv(x, qweight, scales, zeros, group, bits, bias, block_n=16,
                                          block_w=block_w, split_k=split_k)
                    assert_close(got / scale, want / scale, dtype, 4)


def test_a_gemm_tile_across_groups_is_refused(device: torch.device) -> None:
    qweight, scales, zeros = _layout(8, 128, 32, 4, device)
    with pytest.raises(AssertionError, match="straddles"):
        int_weight_gemm(torch.zeros(1, 128, device=device), qweight, scales, zeros, 32, 4, block_k=64)
