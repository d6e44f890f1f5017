"""rotary_store_kv (rotary + the KV store in one launch) against its reference, the unfused pair."""

from __future__ import annotations

import pytest
import torch

from tests.genfleet_kernels.conftest import assert_close

pytest.importorskip("triton")

from genfleet_kernels import reference_fused as ref  # noqa: E402
from genfleet_kernels.rotary_store_kv import rotary_store_kv  # noqa: E402
from worker.models.rotary import build_cos_sin_cache  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(heads: int, n_kv: int, dim: int, dtype: torch.dtype, device: torch.device, seed: int):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    num_blocks, block_size, tokens = 5, 4, 11
    cache = build_cos_sin_cache(dim, 256, 10000.0, None).to(device)  # (256, D)
    positions = torch.randint(0, 256, (tokens,), generator=gen).to(device)  # (T,)
    # q, k and v as strided views of one fused qkv row, the way the model hands them over.
    qkv = (2 * torch.randn(tokens, (heads + 2 * n_kv) * dim, generator=gen)).to(device, dtype)
    q = qkv[:, : heads * dim].view(tokens, heads, dim)  # (T, H, D)
    k = qkv[:, heads * dim : (heads + n_kv) * dim].view(tokens, n_kv, dim)  # (T, n_kv, D)
    v = qkv[:, (heads + n_kv) * dim :].view(tokens, n_kv, dim)  # (T, n_kv, D)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]  # (T,)
    slots[[3, 8]] = -1  # padding rows: q rotated, nothing stored
    return positions, q, k, v, cache, slots.to(device), (num_blocks, block_size, n_kv, dim), gen


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize(("heads", "n_kv", "dim"), [(4, 4, 64), (9, 3, 64), (8, 2, 128)])
def test_rotary_store_kv(heads: int, n_kv: int, dim: int, is_neox: bool, dtype: torch.dtype, device: torch.device) -> None:
    positions, q, k, v, cos_sin, slots, shape, gen = _inputs(heads, n_kv, dim, dtype, device, 1)
    caches = [torch.randn(shape, generator=gen).to(device, dtype) for _ in range(2)]
    got_k, got_v = caches[0].clone(), caches[1].clone()
    want_k, want_v = caches[0].clone(), caches[1].clone()
    got_q = rotary_store_kv(positions, q, k, v, cos_sin, got_k, got_v, slots, is_neox=is_neox)
    want_q = ref.rotary_store_kv(positions, q, k, v, cos_sin, want_k, want_v, slots, is_neox=is_neox)
    assert got_q.shape == (q.shape[0], heads, dim) and got_q.is_contiguous()
    assert_close(got_q, want_q, dtype, 2)
    assert_close(got_k, want_k, dtype, 2)  # the rotated k: rounded once, like the unfused rotary
    assert torch.equal(got_v, want_v)  # v is copied
    untouched = torch.ones(shape[0] * shape[1], dtype=torch.bool, device=device)
    untouched[slots[slots >= 0]] = False
    assert torch.equal(got_k.flatten(0, 1)[untouched], caches[0].flatten(0, 1)[untouched])
    assert torch.equal(got_v.flatten(0, 1)[untouched], caches[1].flatten(0, 1)[untouched])


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_store_kv_into_an_fp8_cache(dtype: torch.dtype, fp8: torch.dtype, device: torch.device) -> None:
    positions, q, k, v, cos_sin, slots, shape, _ = _inputs(8, 2, 128, dtype, device, 2)
    k[4] = 0  # an all-zero row still gets a positive scale
    got = [torch.zeros(shape, device=device).to(fp8) for _ in range(2)]
    want = [c.clone() for c in got]
    got_s = [torch.zeros(shape[:3], device=device, dtype=torch.float16) for _ in range(2)]
    want_s = [s.clone() for s in got_s]
    got_q = rotary_store_kv(positions, q, k, v, cos_sin, got[0], got[1], slots, got_s[0], got_s[1])
    want_q = ref.rotary_store_kv(positions, q, k, v, cos_sin, want[0], want[1], slots, want_s[0], want_s[1])
    assert_close(got_q, want_q, dtype, 2)
    step = 2.0 ** -{torch.float8_e4m3fn: 3, torch.float8_e5m2: 2}[fp8]  # one FP8 step, relative: k may round an ulp apart
    for g, w, gs, ws in zip(got, want, got_s, want_s, strict=True):
        torch.testing.assert_close(gs.float(), ws.float(), rtol=1e-2, atol=0.0)
        deq_g, deq_w = g.float() * gs.float().unsqueeze(-1), w.float() * ws.float().unsqueeze(-1)
        torch.testing.assert_close(deq_g, deq_w, rtol=step, atol=float(ws.float().max()) * step)
    assert bool((got_s[0].flatten(0, 1)[slots[4]] > 0).all())
