"""The one-byte-weight GEMVs of 1-16 rows (genfleet_kernels/w8_gemv.py, genfleet_kernels/w8a8_gemv.py) against
genfleet_kernels/reference.py."""

from __future__ import annotations

import pytest
import torch

from tests.genfleet_kernels.conftest import ON_GPU, assert_close

pytest.importorskip("triton")

from genfleet_kernels import reference as ref  # noqa: E402
from genfleet_kernels.w8_gemv import w8_gemv  # noqa: E402
from genfleet_kernels.w8a8_gemv import W8A8_CONFIGS, w8a8_gemv  # noqa: E402

FP8 = torch.float8_e4m3fn
# Small tiles for the interpreter: (block_n, block_k, warps, stages, split_k, bits)
SMALL = ((8, 64, 4, 1, 1, False), (8, 64, 4, 1, 1, True), (4, 128, 4, 1, 2, False), (16, 64, 4, 1, 3, True))


def _weights(n: int, k: int, weight_dtype: torch.dtype, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if weight_dtype == torch.int8:
        w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
        return w, torch.rand(n, generator=gen) / (127 * k**0.5)
    w = (torch.randn(n, k, generator=gen) * 100).clamp(-448, 448).to(FP8)
    # Zeros of both signs, the smallest subnormals, the largest normals, the smallest normal.
    w[0, :8] = torch.tensor([0.0, -0.0, 2**-9, -(2**-9), 448, -448, 2**-6, 7 * 2**-9]).to(FP8)
    return w, torch.rand(n, generator=gen) / (100 * k**0.5)


@pytest.mark.parametrize("weight_dtype", [torch.int8, FP8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "k", "n"), [(1, 200, 40), (3, 320, 24), (16, 128, 20)])
@pytest.mark.parametrize("bias", [False, True])
def test_w8_gemv_variants_match_the_reference(rows: int, k: int, n: int, dtype: torch.dtype, weight_dtype: torch.dtype,
                                              bias: bool, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(11)
    w, scale = _weights(n, k, weight_dtype, gen)
    x = torch.randn(rows, k, generator=gen).to(device, dtype)
    b = torch.randn(n, generator=gen).to(device, dtype) if bias else None
    w, scale = w.to(device), scale.to(device)
    want = ref.w8_linear(x, w, scale, b)
    for config in SMALL:
        got = w8_gemv(x, w, scale, b, config)
        assert got.shape == (rows, n) and got.dtype == dtype, config
        assert_close(got, want, dtype, 2)


@pytest.mark.parametrize("weight_dtype", [torch.int8, FP8])
def test_bytes_made_float_by_integer_operations_are_exact(weight_dtype: torch.dtype, device: torch.device) -> None:
    # `bits` scales by powers of two only, and sums in the same order: the same float32 bits.
    gen = torch.Generator().manual_seed(12)
    w, scale = _weights(24, 256, weight_dtype, gen)
    w, scale = w.to(device), scale.to(device)
    x = (torch.randn(2, 256, generator=gen) * torch.logspace(-3, 3, 256)).to(device)
    plain = w8_gemv(x, w, scale, None, (8, 64, 4, 1, 1, False))
    assert torch.equal(w8_gemv(x, w, scale, None, (8, 64, 4, 1, 1, True)), plain)
    one_hot = torch.zeros(1, 256, device=device)
    one_hot[0, 2] = 1.0  # picks column 2: the smallest subnormal in row 0 for FP8
    picked = w8_gemv(one_hot, w, scale, None, (8, 64, 4, 1, 1, True))
    assert torch.equal(picked[0], w[:, 2].float() * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "k", "n"), [(1, 256, 72), (5, 300, 64), (16, 128, 130)])
@pytest.mark.parametrize("bias", [False, True])
def test_w8a8_gemv_matches_the_scaled_mm_numerics(rows: int, k: int, n: int, dtype: torch.dtype, bias: bool,
                                                  device: torch.device) -> None:
    gen = torch.Generator().manual_seed(13)
    w, scale = _weights(n, k, FP8, gen)
    x = (torch.randn(rows, k, generator=gen) * torch.logspace(-1, 1, rows).unsqueeze(1)).to(device, dtype)
    b = torch.randn(n, generator=gen).to(device, dtype) if bias else None
    w, scale = w.to(device), scale.to(device)
    want = ref.w8a8_linear(x, w, scale, b)
    configs = W8A8_CONFIGS if ON_GPU else ((64, 64, 1, 4, 1), (32, 128, 2, 4, 1), (64, 64, 0, 4, 1))
    # sm_90's FP8 tensor cores accumulate with fewer bits than float32 (the reference's), so on a GPU
    # a float32 x is held to bfloat16's tolerance.
    close_as = torch.bfloat16 if ON_GPU else dtype
    for config in configs:
        got = w8a8_gemv(x, w, scale, b, config)
        assert got.shape == (rows, n) and got.dtype == dtype, config
        assert_close(got, want, close_as, 2)
    # And within FP8's step of x of the weight-only product.
    weight_only = ref.w8_linear(x.float(), w, scale, None if b is None else b.float())
    err = (got.float() - weight_only).norm() / weight_only.norm()
    assert err < 0.05, err


def test_refuses_more_rows_than_it_takes(device: torch.device) -> None:
    w = torch.zeros(16, 64, device=device).to(FP8)
    with pytest.raises(AssertionError):
        w8_gemv(torch.zeros(17, 64, device=device), w, torch.ones(16, device=device))
    with pytest.raises(AssertionError):
        w8a8_gemv(torch.zeros(17, 64, device=device), w, torch.ones(16, device=device))


@pytest.mark.gpu
def test_split_and_w8a8_paths_stay_right_replayed_from_a_graph() -> None:
    # The partials of a split tile meet in one launch (genfleet_kernels/split_k.py): every launch, eager or
    # replayed, gives the same answer on the 8B down shape, at one row and at 16.
    from worker.quant.w8 import _GEMV_MORE

    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(14)
    w, scale = _weights(4096, 14336, FP8, gen)
    w, scale = w.to(device), scale.to(device)
    for rows in (1, 16):
        x = torch.randn(rows, 14336, generator=gen).to(device, torch.bfloat16)
        launches = [lambda c=c: w8_gemv(x, w, scale, None, c) for c in _GEMV_MORE]
        launches += [lambda c=c: w8a8_gemv(x, w, scale, None, c) for c in W8A8_CONFIGS]
        for i, launch in enumerate(launches):
            want = (ref.w8_linear if i < len(_GEMV_MORE) else ref.w8a8_linear)(x, w, scale)
            first = launch()
            assert_close(first, want, torch.bfloat16, 2)
            assert all(torch.equal(launch(), first) for _ in range(10))
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = launch()
            for _ in range(3):
                graph.replay()
                assert torch.equal(out, first)
