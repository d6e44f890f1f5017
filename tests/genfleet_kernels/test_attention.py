"""Paged attention kernels (split-KV decode, varlen prefill over cached pages) against the reference."""

from __future__ import annotations

import pytest
import torch

from tests.genfleet_kernels.conftest import ON_GPU, assert_close

pytest.importorskip("triton")

from genfleet_kernels import reference as ref  # noqa: E402
from genfleet_kernels.paged_decode_attention import paged_decode_attention  # noqa: E402
from genfleet_kernels.prefill_attention import prefill_attention  # noqa: E402

# Triton's CPU interpreter multiplies bfloat16 tiles wrong (a bare 16x16 tl.dot is off by 1e10),
# so bfloat16 attention runs on the GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
# (query heads, kv heads, head dim): GQA ratios 1, 3, 4 and 8, head dims 64 and 128.
HEADS = [(2, 2, 64), (3, 1, 64), (8, 2, 128), (8, 1, 128)]


def _paged_batch(
    spans: list[tuple[int, int]], heads: int, n_kv: int, dim: int, block_size: int,
    dtype: torch.dtype, device: torch.device, seed: int,
) -> tuple[torch.Tensor, ...]:
    """Random caches holding each sequence's cached + new keys on scattered pages, and its queries.

    spans: (cached tokens, new tokens) per sequence.
    """
    gen = torch.Generator().manual_seed(seed)
    pages = [-(-(c + n) // block_size) for c, n in spans]
    num_blocks = sum(pages) + 3
    k_cache = torch.randn(num_blocks, block_size, n_kv, dim, generator=gen).to(device, dtype)
    v_cache = torch.randn(num_blocks, block_size, n_kv, dim, generator=gen).to(device, dtype)
    order = torch.randperm(num_blocks, generator=gen).tolist()
    width = max(pages) + 1
    tables = torch.zeros(len(spans), width, dtype=torch.int32)
    for i, p in enumerate(pages):
        tables[i, :p] = torch.tensor(order[:p], dtype=torch.int32)
        order = order[p:]
    seq_lens = torch.tensor([c + n for c, n in spans], dtype=torch.int32)
    starts = torch.tensor([0] + [n for _, n in spans], dtype=torch.int32).cumsum(0).to(torch.int32)
    q = torch.randn(int(starts[-1]), heads, dim, generator=gen).to(device, dtype)  # (T, H, D)
    return q, k_cache, v_cache, tables.to(device), seq_lens.to(device), starts.to(device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "n_kv", "dim"), HEADS)
@pytest.mark.parametrize("block_size", [16, 4])
def test_prefill_attention(heads: int, n_kv: int, dim: int, block_size: int, dtype: torch.dtype, device: torch.device) -> None:
    # A fresh odd-length prefill, a chunk after a cached prefix that ends mid-page, a decode row,
    # a chunk crossing the 64-query tile boundary, and a sequence with no new tokens.
    spans = [(0, 7), (13, 5), (31, 1), (16, 70 if ON_GPU else 66), (5, 0)]
    if ON_GPU:
        spans += [(900, 300), (0, 513)]
    q, kc, vc, bt, sl, qsl = _paged_batch(spans, heads, n_kv, dim, block_size, dtype, device, seed=heads + dim)
    scale = dim**-0.5
    got = prefill_attention(q, kc, vc, bt, sl, qsl, scale)
    want = ref.prefill_attention(q, kc, vc, bt, sl, qsl, scale)
    assert_close(got, want, dtype, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "n_kv", "dim"), HEADS)
@pytest.mark.parametrize("num_splits", [1, 4, None])
def test_decode_attention(heads: int, n_kv: int, dim: int, num_splits: int | None, dtype: torch.dtype, device: torch.device) -> None:
    # Context lengths at, just past and well inside page and split boundaries; one context
    # shorter than the number of splits leaves empty slices.
    lens = [1, 16, 17, 63, 130] + ([2049, 4000] if ON_GPU else [])
    q, kc, vc, bt, sl, qsl = _paged_batch([(n - 1, 1) for n in lens], heads, n_kv, dim, 16, dtype, device, seed=dim)
    scale = dim**-0.5
    got = paged_decode_attention(q, kc, vc, bt, sl, qsl, scale, num_splits=num_splits)
    want = ref.paged_decode_attention(q, kc, vc, bt, sl, qsl, scale)
    assert_close(got, want, dtype, 2)
    # The decode reference agrees with the general one on one-token rows.
    assert_close(ref.prefill_attention(q, kc, vc, bt, sl, qsl, scale), want, dtype, 2)


@pytest.mark.parametrize(("block_n", "num_warps", "num_stages"), [(16, 2, 1), (32, 8, 3), (128, 4, 2)])
def test_decode_attention_under_other_launch_settings(
    block_n: int, num_warps: int, num_stages: int, device: torch.device
) -> None:
    # Key tiles narrower and wider than a page and the default, as a tuned launch may pick.
    lens = [1, 17, 130, 200]
    q, kc, vc, bt, sl, qsl = _paged_batch([(n - 1, 1) for n in lens], 8, 2, 64, 16, torch.float32, device, seed=7)
    got = paged_decode_attention(q, kc, vc, bt, sl, qsl, 0.125, num_splits=2, block_n=block_n,
                                 num_warps=num_warps, num_stages=num_stages)
    assert_close(got, ref.paged_decode_attention(q, kc, vc, bt, sl, qsl, 0.125), torch.float32, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "n_kv", "dim"), HEADS)
@pytest.mark.parametrize("num_splits", [1, 4, None])
def test_decode_attention_of_several_queries(
    heads: int, n_kv: int, dim: int, num_splits: int | None, dtype: torch.dtype, device: torch.device
) -> None:
    # Verification rows: a sampled token and its drafts, causal among themselves, mixed with
    # plain one-token decodes; contexts shorter than the split count, across pages and splits.
    spans = [(0, 5), (15, 2), (16, 1), (62, 5), (129, 3), (3, 4)] + ([(2044, 5), (4000, 1)] if ON_GPU else [])
    q, kc, vc, bt, sl, qsl = _paged_batch(spans, heads, n_kv, dim, 16, dtype, device, seed=dim + 1)
    scale = dim**-0.5
    width = max(n for _, n in spans)
    got = paged_decode_attention(q, kc, vc, bt, sl, qsl, scale, num_splits=num_splits, max_query_len=width)
    want = ref.paged_decode_attention(q, kc, vc, bt, sl, qsl, scale)
    assert_close(got, want, dtype, 2)
    # Each of a sequence's queries attends as a chunked prefill over its cached prefix would.
    assert_close(ref.prefill_attention(q, kc, vc, bt, sl, qsl, scale), want, dtype, 2)


@pytest.mark.parametrize(("window", "softcap"), [(6, 0.0), (0, 2.5), (3, 1.5)])
def test_decode_attention_of_several_queries_with_a_window_and_softcap(
    window: int, softcap: float, device: torch.device
) -> None:
    # Each query's window ends at its own position: a sequence's drafts see different keys.
    spans = [(0, 5), (13, 3), (20, 1), (37, 4)]
    q, kc, vc, bt, sl, qsl = _paged_batch(spans, 4, 2, 64, 4, torch.float32, device, seed=window + 11)
    kw = {"window": window, "softcap": softcap}
    want = ref.paged_decode_attention(q, kc, vc, bt, sl, qsl, 0.125, **kw)
    assert_close(paged_decode_attention(q, kc, vc, bt, sl, qsl, 0.125, num_splits=2, max_query_len=5, **kw),
                 want, torch.float32, 2)
    assert_close(ref.prefill_attention(q, kc, vc, bt, sl, qsl, 0.125, **kw), want, torch.float32, 2)


def _to_fp8(cache: torch.Tensor, fp8: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A cache's pages as FP8 with their per-(slot, KV head) scales, the way store_kv writes them."""
    return ref.quantize_kv_rows(cache, fp8)


FP8_KV = [torch.float8_e4m3fn, torch.float8_e5m2]
FP8_Q = [torch.float16] + ([torch.bfloat16] if ON_GPU else [])


@pytest.mark.parametrize("fp8", FP8_KV)
@pytest.mark.parametrize("dtype", FP8_Q)
@pytest.mark.parametrize(("heads", "n_kv", "dim"), [(3, 1, 64), (8, 2, 128)])
def test_attention_over_an_fp8_cache(
    heads: int, n_kv: int, dim: int, dtype: torch.dtype, fp8: torch.dtype, device: torch.device
) -> None:
    # Prefill, a chunk after a cached prefix, and decode rows: both kernels read FP8 pages and
    # their scales the way the reference dequantizes them.
    spans = [(0, 7), (13, 5), (31, 1), (16, 66)]
    q, kc, vc, bt, sl, qsl = _paged_batch(spans, heads, n_kv, dim, 16, dtype, device, seed=dim + 1)
    (kq, ks), (vq, vs) = _to_fp8(kc, fp8), _to_fp8(vc, fp8)
    scale = dim**-0.5
    want = ref.prefill_attention(q, kq, vq, bt, sl, qsl, scale, ks, vs)
    assert_close(prefill_attention(q, kq, vq, bt, sl, qsl, scale, ks, vs), want, dtype, 2)
    decodes = [(n - 1, 1) for n in (1, 17, 130)]
    q, kc, vc, bt, sl, qsl = _paged_batch(decodes, heads, n_kv, dim, 16, dtype, device, seed=dim + 2)
    (kq, ks), (vq, vs) = _to_fp8(kc, fp8), _to_fp8(vc, fp8)
    want = ref.paged_decode_attention(q, kq, vq, bt, sl, qsl, scale, ks, vs)
    for splits in (1, 4):
        assert_close(paged_decode_attention(q, kq, vq, bt, sl, qsl, scale, ks, vs, num_splits=splits), want, dtype, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("window", "softcap"), [(5, 0.0), (20, 0.0), (0, 2.5), (9, 1.5)])
def test_sliding_window_and_softcap(window: int, softcap: float, dtype: torch.dtype, device: torch.device) -> None:
    # Windows shorter than a page, than a query tile and than the context, with soft-capped
    # scores alone and with a window: prefill tiles whose first rows see no key of the first
    # tile, a chunk after a cached prefix, and decode rows whose window starts mid-page.
    heads, n_kv, dim = 4, 2, 64
    spans = [(0, 7), (13, 5), (31, 1), (16, 66)]
    q, kc, vc, bt, sl, qsl = _paged_batch(spans, heads, n_kv, dim, 4, dtype, device, seed=window + 3)
    scale = dim**-0.5
    kw = {"window": window, "softcap": softcap}
    want = ref.prefill_attention(q, kc, vc, bt, sl, qsl, scale, **kw)
    assert_close(prefill_attention(q, kc, vc, bt, sl, qsl, scale, **kw), want, dtype, 2)
    if window:  # the window changes the answer: the test would see a kernel that ignored it
        assert (want - ref.prefill_attention(q, kc, vc, bt, sl, qsl, scale, softcap=softcap)).abs().max() > 1e-2
    q, kc, vc, bt, sl, qsl = _paged_batch([(n - 1, 1) for n in (1, 6, 17, 130)], heads, n_kv, dim, 4, dtype, device,
                                          seed=window + 4)
    want = ref.paged_decode_attention(q, kc, vc, bt, sl, qsl, scale, **kw)
    for splits in (1, 4):
        assert_close(paged_decode_attention(q, kc, vc, bt, sl, qsl, scale, num_splits=splits, **kw), want, dtype, 2)
    assert_close(ref.prefill_attention(q, kc, vc, bt, sl, qsl, scale, **kw), want, dtype, 2)
    if softcap:
        assert (want - ref.paged_decode_attention(q, kc, vc, bt, sl, qsl, scale, window=window)).abs().max() > 1e-3


def test_decode_reads_no_page_before_the_window(device: torch.device) -> None:
    # Pages wholly before the window hold NaN: a kernel that read them would return NaN.
    heads, n_kv, dim, page = 2, 1, 64, 4
    q, kc, vc, bt, sl, qsl = _paged_batch([(40, 1), (70, 1)], heads, n_kv, dim, page, torch.float32, device, seed=7)
    window = 9
    want = ref.paged_decode_attention(q, kc, vc, bt, sl, qsl, dim**-0.5, window=window)
    for i, n in enumerate(sl.tolist()):
        first_page = (n - window) // page
        kc[bt[i, :first_page].long()] = float("nan")
        vc[bt[i, :first_page].long()] = float("nan")
    for splits in (1, 4):
        got = paged_decode_attention(q, kc, vc, bt, sl, qsl, dim**-0.5, num_splits=splits, window=window)
        assert_close(got, want, torch.float32)
    got = prefill_attention(q, kc, vc, bt, sl, qsl, dim**-0.5, window=window)
    assert_close(got, want, torch.float32)


def test_stale_table_entries_before_the_window_are_never_read(device: torch.device) -> None:
    # The block manager gives back the pages behind a window and leaves their ids in the table:
    # here they name a page of NaN. Kernels and references alike must answer as with the real pages.
    heads, n_kv, dim, page, window = 4, 2, 64, 4, 7
    spans = [(40, 1), (70, 1), (30, 6), (13, 3)]  # decodes, a prefill chunk, decode rows with drafts
    q, kc, vc, bt, sl, qsl = _paged_batch(spans, heads, n_kv, dim, page, torch.float32, device, seed=17)
    scale = dim**-0.5
    want_prefill = ref.prefill_attention(q, kc, vc, bt, sl, qsl, scale, window=window)
    width = max(n for _, n in spans)
    stale = bt.clone()
    poisoned = kc.shape[0] - 1  # _paged_batch leaves spare blocks: one of them holds NaN
    kc[poisoned], vc[poisoned] = float("nan"), float("nan")
    for i, (cached, _) in enumerate(spans):
        stale[i, : max(0, cached - window + 1) // page] = poisoned
    assert (stale == poisoned).sum() > 0
    assert_close(ref.prefill_attention(q, kc, vc, stale, sl, qsl, scale, window=window), want_prefill, torch.float32)
    assert_close(prefill_attention(q, kc, vc, stale, sl, qsl, scale, window=window), want_prefill, torch.float32, 2)
    decodes = [0, 1, 3]  # the rows a decode step would carry (one token, or one and its drafts)
    rows = torch.cat([torch.arange(int(qsl[i]), int(qsl[i + 1])) for i in decodes]).to(device)
    lens = torch.tensor([n for _, n in (spans[i] for i in decodes)], dtype=torch.int32)
    starts = torch.cat([torch.zeros(1, dtype=torch.int32), lens.cumsum(0).to(torch.int32)]).to(device)
    index = torch.tensor(decodes, device=device)
    args = (q[rows], kc, vc, stale[index], sl[index], starts, scale)
    want = want_prefill[rows]
    assert_close(ref.paged_decode_attention(*args, window=window), want, torch.float32)
    for splits in (1, 4):
        got = paged_decode_attention(*args, window=window, num_splits=splits, max_query_len=width)
        assert_close(got, want, torch.float32, 2)


@pytest.mark.parametrize("fp8", FP8_KV)
@pytest.mark.parametrize("dtype", [torch.float32, *FP8_Q])
@pytest.mark.parametrize(("block_n", "num_splits"), [(16, 1), (64, 4), (128, 2)])
def test_decode_attention_over_fp8_words_matches_the_cast(
    fp8: torch.dtype, dtype: torch.dtype, block_n: int, num_splits: int, device: torch.device
) -> None:
    # The values read as words (and the scales a tile ahead) give what casting each tile gives:
    # drafts causal among themselves, a window, contexts shorter than a tile or a split (the last
    # tile's prefetch runs past the slice), scales spread over decades.
    spans = [(0, 1), (15, 3), (40, 1), (129, 2), (3, 1)]
    q, kc, vc, bt, sl, qsl = _paged_batch(spans, 8, 2, 64, 16, dtype, device, seed=block_n + num_splits)
    spread = torch.logspace(-3, 2, kc.shape[0] * kc.shape[1]).view(kc.shape[0], kc.shape[1], 1, 1).to(device)
    (kq, ks), (vq, vs) = _to_fp8(kc * spread.to(dtype), fp8), _to_fp8(vc * spread.flip(0).to(dtype), fp8)
    launch = {"num_splits": num_splits, "block_n": block_n, "max_query_len": 3}
    for window in (0, 20):
        want = ref.paged_decode_attention(q, kq, vq, bt, sl, qsl, 0.125, ks, vs, window=window)
        words = paged_decode_attention(q, kq, vq, bt, sl, qsl, 0.125, ks, vs, window=window, **launch)
        cast = paged_decode_attention(q, kq, vq, bt, sl, qsl, 0.125, ks, vs, window=window, fp8_words=False, **launch)
        assert_close(words, want, dtype, 2)
        assert_close(words, cast, dtype, 2)
