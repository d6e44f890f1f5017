"""The CPU's attention and KV store: torch's fused attention over gathered pages, one call per batch.

kernels/reference.py is the oracle, written for clarity: it widens every gathered page to float32,
repeats each KV head over its query heads and materializes the scores, so a decode step's cost
grew with the batch. Here a step's decode sequences are gathered in one `index_select` per cache
(the pages stay in the cache's dtype), each KV head's query heads are folded into its query rows,
and `scaled_dot_product_attention` (a fused, float32-accumulating CPU kernel) attends every row
at once, a mask hiding the padding past each sequence, the keys after each query and those before
a sliding window. Prefill is the same call, one sequence at a time.

FP8 pages (per-slot scales) and soft-capped scores are not something the fused kernel does: those
layers go to the reference. Same signatures as the reference's launchers (worker/ops.py swaps them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import reference

__all__ = ["store_kv", "paged_decode_attention", "prefill_attention"]

# Decode sequences gathered together, padded to the longest: the cap bounds the padded K/V copy.
_GATHER_TOKENS = 1 << 16


def store_kv(
    k: torch.Tensor,  # (T, n_kv, D)
    v: torch.Tensor,  # (T, n_kv, D)
    k_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # (T,) int64; negative = skip
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    if k_scale is not None or v_scale is not None:
        reference.store_kv(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
        return
    if bool((slot_mapping < 0).any()):  # a host read: free on the CPU
        keep = slot_mapping >= 0
        k, v, slot_mapping = k[keep], v[keep], slot_mapping[keep]
    for new, cache in ((k, k_cache), (v, v_cache)):
        cache.view(-1, *cache.shape[2:]).index_copy_(0, slot_mapping, new.to(cache.dtype))


def paged_decode_attention(
    q: torch.Tensor,  # (T, H, D): each sequence's new tokens (one, or a few when verifying drafts)
    k_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # (B, max_blocks) int32
    seq_lens: torch.Tensor,  # (B,) int32: cached + new tokens per sequence
    query_start_loc: torch.Tensor,  # (B + 1,) int32
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    window: int = 0,
    softcap: float = 0.0,
    max_query_len: int = 1,
) -> torch.Tensor:  # (T, H, D)
    if k_scale is not None or softcap > 0:
        return reference.paged_decode_attention(
            q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale, k_scale, v_scale, window, softcap,
            max_query_len,
        )
    out = torch.empty_like(q)
    starts, lens = query_start_loc.tolist(), seq_lens.tolist()
    # Similar lengths side by side: less padding.
    order = sorted((i for i in range(len(lens)) if starts[i + 1] > starts[i]), key=lambda i: lens[i])
    lo = 0
    while lo < len(order):
        hi = lo + 1
        while hi < len(order) and (hi + 1 - lo) * lens[order[hi]] <= _GATHER_TOKENS:
            hi += 1
        _attend(q, out, k_cache, v_cache, block_tables, order[lo:hi], starts, lens, scale, window)
        lo = hi
    return out


def prefill_attention(
    q: torch.Tensor,  # (T, H, D)
    k_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # (B, max_blocks) int32
    seq_lens: torch.Tensor,  # (B,) int32
    query_start_loc: torch.Tensor,  # (B + 1,) int32
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    window: int = 0,
    softcap: float = 0.0,
) -> torch.Tensor:  # (T, H, D)
    if k_scale is not None or softcap > 0:
        return reference.prefill_attention(
            q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale, k_scale, v_scale, window, softcap
        )
    out = torch.empty_like(q)
    starts, lens = query_start_loc.tolist(), seq_lens.tolist()
    for i in range(len(lens)):  # a prompt's rows are many: one call each costs little
        if starts[i + 1] > starts[i]:
            _attend(q, out, k_cache, v_cache, block_tables, [i], starts, lens, scale, window)
    return out


def _attend(
    q: torch.Tensor,  # (T, H, D)
    out: torch.Tensor,  # (T, H, D): the chosen sequences' rows are written
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    chosen: list[int],  # sequences, by batch index
    starts: list[int],  # query_start_loc, on the host
    lens: list[int],  # seq_lens, on the host
    scale: float,
    window: int,
) -> None:
    num_blocks, block_size, n_kv, dim = k_cache.shape
    num_heads = q.shape[1]
    group = num_heads // n_kv
    b, width = len(chosen), max(starts[i + 1] - starts[i] for i in chosen)
    q_len = torch.tensor([starts[i + 1] - starts[i] for i in chosen]).unsqueeze(1)  # (b, 1)
    seq = torch.tensor([lens[i] for i in chosen]).unsqueeze(1)  # (b, 1)
    # Each sequence's pages from the first its first query sees (all, or the window's): a page
    # wholly before the window is never read.
    first = ((seq - q_len - window + 1).clamp(min=0) // block_size if window > 0 else torch.zeros_like(seq))  # (b, 1)
    pages = int((-(-seq // block_size) - first).max())
    page_idx = (first + torch.arange(pages)).clamp(max=block_tables.shape[1] - 1)  # (b, pages): past the end, masked
    ids = block_tables[torch.tensor(chosen).unsqueeze(1), page_idx].reshape(-1).long()  # (b * pages,)
    keys = pages * block_size
    # (b, n_kv, S, D) views of one gather each: pages in the cache's own dtype.
    k = k_cache.view(num_blocks, -1).index_select(0, ids).view(b, keys, n_kv, dim).transpose(1, 2)
    v = v_cache.view(num_blocks, -1).index_select(0, ids).view(b, keys, n_kv, dim).transpose(1, 2)
    # Query j of sequence i is row starts[i] + j; rows past its q_len are padding (row 0, dropped).
    j = torch.arange(width).unsqueeze(0)  # (1, W)
    real = j < q_len  # (b, W)
    rows = torch.where(real, torch.tensor([starts[i] for i in chosen]).unsqueeze(1) + j, 0)  # (b, W)
    # KV head n's queries are rows w * group + h of (b, n_kv, W * group, D): one product per KV head.
    qg = q[rows].view(b, width, n_kv, group, dim).transpose(1, 2).reshape(b, n_kv, width * group, dim)
    mask = None
    if b > 1 or width > 1 or window > 0 or keys > lens[chosen[0]]:
        q_pos = (seq - q_len + j).unsqueeze(2)  # (b, W, 1): a padding row's is past its sequence
        k_pos = (first * block_size + torch.arange(keys)).unsqueeze(1)  # (b, 1, S)
        seen = k_pos <= q_pos  # (b, W, S): keys after the query, and padding past the sequence, hidden
        if window > 0:
            seen &= k_pos > q_pos - window
        mask = seen.repeat_interleave(group, dim=1).unsqueeze(1)  # (b, 1, W * group, S)
    attn = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)  # (b, n_kv, W * group, D)
    attn = attn.view(b, n_kv, width, group, dim).transpose(1, 2).reshape(b, width, num_heads, dim)
    out[rows[real]] = attn[real].to(q.dtype)  # (rows, H, D)
