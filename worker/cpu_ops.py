"""The CPU's attention, KV store and the decode layer's small ops: fused C++ where it is built, torch otherwise.

worker/cpu_native.cpp (built once per machine by worker/cpu_native.py, on unless --cpu-kernels
is off) does the norms, rotary, SiLU-and-mul, the KV store and decode attention in one call each,
the attention reading keys and values straight from the pages. Without it, the torch path below:

genfleet_kernels/reference.py is the oracle, written for clarity: it widens every gathered page to float32,
repeats each KV head over its query heads and materializes the scores, so a decode step's cost
grew with the batch. Here a step's decode sequences are gathered in one `index_select` per cache
(the pages stay in the cache's dtype), each KV head's query heads are folded into its query rows,
and `scaled_dot_product_attention` (a fused, float32-accumulating CPU kernel) attends every row
at once, a mask hiding the padding past each sequence, the keys after each query and those before
a sliding window. Prefill is the same call, one sequence at a time.

FP8 pages (per-slot scales) and soft-capped scores are not something the fused kernel does: those
layers go to the reference. Same signatures as the reference's launchers (worker/ops.py swaps them).

NOTE(garbage slots): a sequence's last page holds slots it has not written yet (and a padded
sequence's extra pages belong to others); the mask gives them weight 0, but 0 * NaN is NaN, so the
torch path zeroes them in its gathered copy, and the C++ path never reads past a sequence's length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genfleet_kernels import reference
from worker import cpu_native

__all__ = ["use_native", "store_kv", "paged_decode_attention", "prefill_attention", "rms_norm", "rotary_embedding",
           "silu_and_mul"]

# Decode sequences gathered together, padded to the longest: the cap bounds the padded K/V copy.
_GATHER_TOKENS = 1 << 16
_native: dict[str, bool] = {"on": False}  # set once per worker by use_native


def use_native(enabled: bool) -> bool:
    """Use the C++ ops where they build (worker/ops.py calls this at start); returns whether they are on."""
    _native["on"] = enabled and cpu_native.load()
    return _native["on"]


def rms_norm(
    x: torch.Tensor,  # (T, hidden)
    weight: torch.Tensor,  # (hidden,)
    eps: float,
    residual: torch.Tensor | None = None,  # (T, hidden)
    offset: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    if not _native["on"] or x.dim() != 2:
        return reference.rms_norm(x, weight, eps, residual, offset)
    out, summed = cpu_native.ops().add_rms_norm(x, residual, weight, eps, offset)  # (T, hidden) each
    return (out, summed) if residual is not None else out


def rotary_embedding(
    positions: torch.Tensor,  # (T,) int64
    q: torch.Tensor,  # (T, H, D)
    k: torch.Tensor,  # (T, n_kv, D)
    cos_sin_cache: torch.Tensor,  # (max_position, D) float32
    is_neox: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    if (not _native["on"] or q.dtype != k.dtype or cos_sin_cache.dtype != torch.float32
            or cos_sin_cache.shape[-1] != q.shape[-1] or q.stride(-1) != 1 or k.stride(-1) != 1):
        return reference.rotary_embedding(positions, q, k, cos_sin_cache, is_neox)
    return cpu_native.ops().rotary_embedding(positions, q, k, cos_sin_cache, is_neox)  # type: ignore[no-any-return]


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:  # (T, 2I) -> (T, I)
    if not _native["on"] or x.dim() != 2:
        return reference.silu_and_mul(x)
    return cpu_native.ops().silu_and_mul(x)  # type: ignore[no-any-return]


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
    if _native["on"] and k.dtype == k_cache.dtype and v.dtype == v_cache.dtype and k.stride(-1) == v.stride(-1) == 1:
        cpu_native.ops().store_kv(k, v, k_cache, v_cache, slot_mapping)
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
    if _native["on"] and k_cache.dtype == v_cache.dtype == q.dtype and q.stride(-1) == 1:
        return cpu_native.ops().paged_decode_attention(  # type: ignore[no-any-return]
            q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale, window
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
    k_rows = k_cache.view(num_blocks, -1).index_select(0, ids).view(b, keys, n_kv, dim)
    v_rows = v_cache.view(num_blocks, -1).index_select(0, ids).view(b, keys, n_kv, dim)
    k_pos = (first * block_size + torch.arange(keys)).unsqueeze(1)  # (b, 1, S)
    unwritten = k_pos.squeeze(1) >= seq  # (b, S): slots past each sequence (NOTE(garbage slots))
    if bool(unwritten.any()):  # a host read: free on the CPU
        k_rows.masked_fill_(unwritten[:, :, None, None], 0)
        v_rows.masked_fill_(unwritten[:, :, None, None], 0)
    k, v = k_rows.transpose(1, 2), v_rows.transpose(1, 2)  # (b, n_kv, S, D)
    # Query j of sequence i is row starts[i] + j; rows past its q_len are padding (row 0, dropped).
    j = torch.arange(width).unsqueeze(0)  # (1, W)
    real = j < q_len  # (b, W)
    rows = torch.where(real, torch.tensor([starts[i] for i in chosen]).unsqueeze(1) + j, 0)  # (b, W)
    # KV head n's queries are rows w * group + h of (b, n_kv, W * group, D): one product per KV head.
    qg = q[rows].view(b, width, n_kv, group, dim).transpose(1, 2).reshape(b, n_kv, width * group, dim)
    mask = None
    if b > 1 or width > 1 or window > 0 or keys > lens[chosen[0]]:
        q_pos = (seq - q_len + j).unsqueeze(2)  # (b, W, 1): a padding row's is past its sequence
        seen = k_pos <= q_pos  # (b, W, S): keys after the query, and padding past the sequence, hidden
        if window > 0:
            seen &= k_pos > q_pos - window
        mask = seen.repeat_interleave(group, dim=1).unsqueeze(1)  # (b, 1, W * group, S)
    attn = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)  # (b, n_kv, W * group, D)
    attn = attn.view(b, n_kv, width, group, dim).transpose(1, 2).reshape(b, width, num_heads, dim)
    out[rows[real]] = attn[real].to(q.dtype)  # (rows, H, D)
