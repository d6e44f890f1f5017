"""The CPU's attention, KV store and small ops (worker/cpu_ops.py), on its torch path and its C++ one
(worker/cpu_native.cpp), against the torch references."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from genfleet_kernels import reference as ref
from tests.genfleet_kernels.conftest import assert_close
from tests.genfleet_kernels.test_attention import _paged_batch
from worker import cpu_native, cpu_ops, ops

CPU = torch.device("cpu")
DTYPES = [torch.float32, torch.bfloat16]
# (query heads, kv heads, head dim): GQA ratios 1, 3 (SmolLM2's) and 4.
HEADS = [(2, 2, 64), (9, 3, 64), (8, 2, 128), (4, 2, 40)]  # 40: the C++ path's any-dim loops


@pytest.fixture(params=["torch", "c++"], autouse=True)
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    # Every test here runs on both paths; the C++ one is built on first use (cached on disk after).
    if request.param == "c++" and not cpu_native.load():
        pytest.skip("the C++ ops do not build here (no compiler?)")
    was = cpu_ops.use_native(request.param == "c++")
    yield request.param
    cpu_ops.use_native(was)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "n_kv", "dim"), HEADS)
@pytest.mark.parametrize("window", [0, 6])
def test_decode_of_a_batch_of_lengths_and_drafts(heads: int, n_kv: int, dim: int, window: int, dtype: torch.dtype) -> None:
    # One-token decodes at, past and inside page boundaries, and sequences verifying drafts
    # (several queries, causal among themselves), padded to the longest in one call.
    spans = [(0, 1), (15, 1), (16, 1), (62, 5), (129, 3), (3, 4), (40, 1)]
    q, kc, vc, bt, sl, qsl = _paged_batch(spans, heads, n_kv, dim, 16, dtype, CPU, seed=dim + window)
    scale = dim**-0.5
    want = ref.paged_decode_attention(q, kc, vc, bt, sl, qsl, scale, window=window)
    assert_close(cpu_ops.paged_decode_attention(q, kc, vc, bt, sl, qsl, scale, window=window, max_query_len=5),
                 want, dtype, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [0, 5, 20])
def test_prefill_after_a_cached_prefix(window: int, dtype: torch.dtype) -> None:
    # A fresh odd-length prompt, a chunk after a prefix that ends mid-page, a decode row, a long
    # chunk, and a sequence with no new tokens.
    spans = [(0, 7), (13, 5), (31, 1), (16, 66), (5, 0)]
    q, kc, vc, bt, sl, qsl = _paged_batch(spans, 9, 3, 64, 4, dtype, CPU, seed=window)
    want = ref.prefill_attention(q, kc, vc, bt, sl, qsl, 0.125, window=window)
    got = cpu_ops.prefill_attention(q, kc, vc, bt, sl, qsl, 0.125, window=window)
    assert_close(got[: int(qsl[-1])], want[: int(qsl[-1])], dtype, 2)


def test_a_window_reads_no_page_before_it() -> None:
    # Pages wholly before each sequence's window hold NaN: a gather of them would spread it.
    q, kc, vc, bt, sl, qsl = _paged_batch([(40, 1), (70, 1), (9, 3)], 4, 2, 64, 4, torch.float32, CPU, seed=7)
    window = 9
    want = ref.paged_decode_attention(q, kc, vc, bt, sl, qsl, 0.125, window=window)
    for i, (n, q_len) in enumerate(zip(sl.tolist(), qsl.diff().tolist(), strict=True)):
        first_page = max(0, n - q_len - window + 1) // 4
        kc[bt[i, :first_page].long()] = float("nan")
        vc[bt[i, :first_page].long()] = float("nan")
    assert_close(cpu_ops.paged_decode_attention(q, kc, vc, bt, sl, qsl, 0.125, window=window), want, torch.float32)
    assert_close(cpu_ops.prefill_attention(q, kc, vc, bt, sl, qsl, 0.125, window=window), want, torch.float32)


def test_softcap_and_fp8_pages_are_the_references() -> None:
    q, kc, vc, bt, sl, qsl = _paged_batch([(20, 1), (33, 2)], 4, 2, 64, 16, torch.float32, CPU, seed=3)
    for fn, want_fn in ((cpu_ops.paged_decode_attention, ref.paged_decode_attention),
                        (cpu_ops.prefill_attention, ref.prefill_attention)):
        assert torch.equal(fn(q, kc, vc, bt, sl, qsl, 0.125, softcap=2.5), want_fn(q, kc, vc, bt, sl, qsl, 0.125, softcap=2.5))
    k8, ks = ref.quantize_kv_rows(kc, torch.float8_e4m3fn)
    v8, vs = ref.quantize_kv_rows(vc, torch.float8_e4m3fn)
    assert torch.equal(cpu_ops.paged_decode_attention(q, k8, v8, bt, sl, qsl, 0.125, ks, vs),
                       ref.paged_decode_attention(q, k8, v8, bt, sl, qsl, 0.125, ks, vs))


@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv_skips_negative_slots(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(6, 3, 64, generator=gen).to(dtype), torch.randn(6, 3, 64, generator=gen).to(dtype)
    slots = torch.tensor([5, -1, 17, 0, -1, 40])
    caches = [torch.zeros(4, 16, 3, 64, dtype=dtype) for _ in range(4)]
    cpu_ops.store_kv(k, v, caches[0], caches[1], slots)
    ref.store_kv(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    assert caches[0].view(-1, 3, 64)[17].equal(k[2])
    cpu_ops.store_kv(k[:1], v[:1], caches[0], caches[1], torch.tensor([63]))  # every slot kept
    assert caches[1].view(-1, 3, 64)[63].equal(v[0])


def test_unwritten_slots_of_a_last_page_are_never_read() -> None:
    # Slots past each sequence's length (its last page's tail, and the pages a shorter sequence
    # is padded with) hold NaN: masked to weight 0, they must still not turn the output to NaN.
    q, kc, vc, bt, sl, qsl = _paged_batch([(21, 1), (3, 1), (40, 3), (0, 6)], 9, 3, 64, 16, torch.bfloat16, CPU, seed=5)
    want_decode = ref.paged_decode_attention(q, kc, vc, bt, sl, qsl, 0.125)
    want_prefill = ref.prefill_attention(q, kc, vc, bt, sl, qsl, 0.125)
    written = torch.zeros(kc.shape[0] * kc.shape[1], dtype=torch.bool)
    for i, n in enumerate(sl.tolist()):
        pos = torch.arange(n)
        written[bt[i, pos // 16].long() * 16 + pos % 16] = True
    for cache in (kc, vc):
        cache.view(-1, 3, 64)[~written] = float("nan")
    assert_close(cpu_ops.paged_decode_attention(q, kc, vc, bt, sl, qsl, 0.125, max_query_len=6), want_decode,
                 torch.bfloat16, 2)
    assert_close(cpu_ops.prefill_attention(q, kc, vc, bt, sl, qsl, 0.125), want_prefill, torch.bfloat16, 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_rotary_and_activation(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    x, res = torch.randn(5, 576, generator=gen).to(dtype), torch.randn(5, 576, generator=gen).to(dtype)
    weight = torch.randn(576, generator=gen).to(dtype)
    for residual, offset in ((None, 0.0), (res, 0.0), (res, 1.0)):
        got, want = cpu_ops.rms_norm(x, weight, 1e-5, residual, offset), ref.rms_norm(x, weight, 1e-5, residual, offset)
        for g, w in zip(*((t,) if isinstance(t, torch.Tensor) else t for t in (got, want)), strict=True):
            assert_close(g, w, dtype)
    gate_up = torch.randn(3, 2 * 96, generator=gen).to(dtype)
    assert_close(cpu_ops.silu_and_mul(gate_up), ref.silu_and_mul(gate_up), dtype)
    # q and k as the attention layer has them: strided views of one fused projection.
    qkv = torch.randn(4, (6 + 2 * 2) * 64, generator=gen).to(dtype)
    q, k = qkv[:, : 6 * 64].view(4, 6, 64), qkv[:, 6 * 64 : 8 * 64].view(4, 2, 64)
    table, positions = torch.randn(50, 64, generator=gen), torch.tensor([0, 7, 16, 49])
    for neox in (True, False):
        for g, w in zip(cpu_ops.rotary_embedding(positions, q, k, table, neox),
                        ref.rotary_embedding(positions, q, k, table, neox), strict=True):
            assert_close(g, w, dtype)


def test_the_cpu_picks_them() -> None:
    ours = set(cpu_ops.__all__) - {"use_native"}
    chosen = ops.use_device(CPU)
    assert {name for name, impl in chosen.items() if impl == "torch (cpu_ops)"} == ours
    if cpu_native.load():
        chosen = ops.use_device(CPU, cpu_kernels=True)
        assert {name for name, impl in chosen.items() if impl == "c++ (cpu_ops)"} == ours - {"prefill_attention"}
    ops.use_device(CPU)
