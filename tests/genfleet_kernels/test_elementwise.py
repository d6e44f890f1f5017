"""rms_norm, silu_and_mul / gelu_tanh_and_mul, rotary and store_kv kernels against genfleet_kernels/reference.py."""

from __future__ import annotations

import pytest
import torch

from tests.genfleet_kernels.conftest import ON_GPU, assert_close

pytest.importorskip("triton")

from genfleet_kernels import reference as ref  # noqa: E402
from genfleet_kernels.rms_norm import rms_norm  # noqa: E402
from genfleet_kernels.rotary_embedding import rotary_embedding  # noqa: E402
from genfleet_kernels.silu_and_mul import gelu_tanh_and_mul, silu_and_mul  # noqa: E402
from genfleet_kernels.store_kv import store_kv  # noqa: E402
from worker.models.rotary import build_cos_sin_cache  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (tokens, hidden): odd counts, a non-power-of-two width, and a wide one on the GPU.
NORM_SHAPES = [(1, 64), (7, 96), (13, 576)] + ([(257, 4096)] if ON_GPU else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NORM_SHAPES)
@pytest.mark.parametrize("fused", [False, True])
def test_rms_norm(shape: tuple[int, int], dtype: torch.dtype, fused: bool, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen).to(device, dtype)  # (T, hidden)
    w = (1 + 0.1 * torch.randn(shape[1], generator=gen)).to(device, dtype)  # (hidden,)
    res = torch.randn(shape, generator=gen).to(device, dtype) if fused else None
    got = rms_norm(x, w, 1e-5, res)
    want = ref.rms_norm(x, w, 1e-5, res)
    if fused:
        assert_close(got[0], want[0], dtype, 2)
        if ON_GPU:  # the residual sum rounds exactly like x + residual
            assert torch.equal(got[1], want[1])
        else:  # the interpreter's bfloat16 cast truncates instead of rounding: one ulp
            assert_close(got[1], want[1], dtype)
    else:
        assert_close(got, want, dtype, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 32), (5, 192), (9, 1536)] + ([(300, 28672)] if ON_GPU else []))
def test_silu_and_mul(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(2)
    x = (2 * torch.randn(shape, generator=gen)).to(device, dtype)  # (T, 2I)
    assert_close(silu_and_mul(x), ref.silu_and_mul(x), dtype, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", [False, True])
def test_rms_norm_with_a_weight_offset(dtype: torch.dtype, fused: bool, device: torch.device) -> None:
    # Gemma's norms: the stored weight is w - 1, and 1 is added in float32.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 96, generator=gen).to(device, dtype)
    w = (0.1 * torch.randn(96, generator=gen)).to(device, dtype)
    res = torch.randn(7, 96, generator=gen).to(device, dtype) if fused else None
    got, want = rms_norm(x, w, 1e-6, res, 1.0), ref.rms_norm(x, w, 1e-6, res, 1.0)
    got, want = (got[0], want[0]) if fused else (got, want)
    assert_close(got, want, dtype, 2)
    plain = ref.rms_norm(x, (w.float() + 1).to(dtype), 1e-6, res)
    assert_close(want, plain[0] if fused else plain, dtype, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 32), (5, 192), (9, 1536)])
def test_gelu_tanh_and_mul(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(4)
    x = (2 * torch.randn(shape, generator=gen)).to(device, dtype)  # (T, 2I)
    assert_close(gelu_tanh_and_mul(x), ref.gelu_tanh_and_mul(x), dtype, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize(
    ("heads", "n_kv", "dim", "scaling"),
    [
        (4, 4, 64, None),
        (9, 3, 64, None),
        (8, 2, 128, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        (24, 3, 128, {"rope_type": "linear", "factor": 2.0}),
    ],
)
def test_rotary(
    heads: int, n_kv: int, dim: int, scaling: dict | None, is_neox: bool, dtype: torch.dtype, device: torch.device  # type: ignore[type-arg]
) -> None:
    gen = torch.Generator().manual_seed(3)
    tokens = 11
    cache = build_cos_sin_cache(dim, 512, 500000.0, scaling).to(device)  # (512, D)
    positions = torch.randint(0, 512, (tokens,), generator=gen).to(device)  # (T,)
    # q and k as strided views of one fused qkv row, the way the model hands them over.
    qkv = torch.randn(tokens, (heads + 2 * n_kv) * dim, generator=gen).to(device, dtype)
    q = qkv[:, : heads * dim].view(tokens, heads, dim)  # (T, H, D)
    k = qkv[:, heads * dim : (heads + n_kv) * dim].view(tokens, n_kv, dim)  # (T, n_kv, D)
    got_q, got_k = rotary_embedding(positions, q, k, cache, is_neox)
    want_q, want_k = ref.rotary_embedding(positions, q, k, cache, is_neox)
    assert_close(got_q, want_q, dtype, 2)
    assert_close(got_k, want_k, dtype, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n_kv", "dim", "block_size"), [(1, 64, 16), (3, 64, 4), (8, 128, 16)])
def test_store_kv(n_kv: int, dim: int, block_size: int, dtype: torch.dtype, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(4)
    num_blocks, tokens = 6, 13
    k = torch.randn(tokens, n_kv, dim, generator=gen).to(device, dtype)  # (T, n_kv, D)
    v = torch.randn(tokens, n_kv, dim, generator=gen).to(device, dtype)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]  # (T,)
    slots[[2, 7]] = -1  # padding rows are skipped
    slots = slots.to(device)
    caches = [torch.randn(num_blocks, block_size, n_kv, dim, generator=gen).to(device, dtype) for _ in range(2)]
    got_k, got_v = caches[0].clone(), caches[1].clone()
    want_k, want_v = caches[0].clone(), caches[1].clone()
    store_kv(k, v, got_k, got_v, slots)
    ref.store_kv(k, v, want_k, want_v, slots)
    assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n_kv", "dim"), [(3, 64), (8, 128)])
def test_store_kv_into_an_fp8_cache(n_kv: int, dim: int, dtype: torch.dtype, fp8: torch.dtype, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(5)
    num_blocks, block_size, tokens = 4, 16, 9
    k = (torch.randn(tokens, n_kv, dim, generator=gen) * 3).to(device, dtype)  # (T, n_kv, D)
    v = torch.randn(tokens, n_kv, dim, generator=gen).to(device, dtype)
    k[4] = 0  # an all-zero row still gets a positive scale
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    slots[1] = -1
    slots = slots.to(device)
    got = [torch.zeros(num_blocks, block_size, n_kv, dim, device=device).to(fp8) for _ in range(2)]
    want = [c.clone() for c in got]
    got_s = [torch.zeros(num_blocks, block_size, n_kv, device=device, dtype=torch.float16) for _ in range(2)]
    want_s = [s.clone() for s in got_s]
    store_kv(k, v, got[0], got[1], slots, got_s[0], got_s[1])
    ref.store_kv(k, v, want[0], want[1], slots, want_s[0], want_s[1])
    # The same bits as the reference: scales and values are rounded the same way.
    for g, w in zip(got + got_s, want + want_s):
        assert torch.equal(g.view(torch.uint8) if g.element_size() == 1 else g, w.view(torch.uint8) if w.element_size() == 1 else w)
