"""Pure-torch reference of every kernel launcher: the CPU path, and the oracle kernel tests compare to.

Layouts shared with the Triton kernels:
- KV cache per layer: (num_blocks, block_size, n_kv, D); a slot is block_id * block_size + offset.
- FP8 KV cache: the pages hold float8 values, and k_scale/v_scale (num_blocks, block_size, n_kv)
  float16 hold one scale per (slot, KV head): a row's value is `page * scale` (`quantize_kv_rows`).
- Varlen batches: the new tokens of all sequences concatenated, (T, ...); sequence i owns rows
  query_start_loc[i]:query_start_loc[i+1], which are its last positions among seq_lens[i].
- Integer weight-only linears (W4A16 / W8A16; every 4-bit checkpoint format is repacked into it):
  `qweight` int32 (N, K / P) with P = 32 // bits, one row of words per output, contiguous along
  the inputs: word (n, w) packs input channels w*P .. w*P + P-1, channel w*P + i at bits
  [i*bits, (i+1)*bits), unsigned; `scales` and `zeros` (N, NG), NG = ceil(K / G), in the scales'
  dtype, the zeros holding integers; W[n, k] = (q[n, k] - zeros[n, k // G]) * scales[n, k // G].
  An act-order checkpoint's channels are stored sorted by group; `perm` (K,) says which input
  column each stored channel reads.
- Quantized experts (`QuantizedExperts`, one stacked projection of every expert, read by the
  fused MoE kernel): FP8 `weight` (E, N, K) float8_e4m3fn with `scale` (E, N) float32, expert e's
  W[n, k] = weight[e, n, k] * scale[e, n]; or integers, each expert the transpose of the integer
  weight-only layout above (words and groups along the rows, as the fused MoE kernel reads them):
  `weight` (E, K / P, N) int32, `scale` and `zeros` (E, NG, N), no act order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "KV_MIN_SCALE",
    "quantize_kv_rows",
    "store_kv",
    "paged_decode_attention",
    "prefill_attention",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "gelu_tanh_and_mul",
    "fused_moe",
    "QuantizedExperts",
    "dequantize_expert",
    "lora_add",
    "pack_int32",
    "unpack_int32",
    "dequantize_int_weight",
    "int_weight_linear",
    "FP8_MIN_ROW_SCALE",
    "quantize_fp8_rows",
    "w8_linear",
    "w8a8_linear",
    "CODEBOOKS_4BIT",
    "quantize_4bit",
    "dequantize_4bit",
]


# The smallest normal float16: a row of zeros still gets a positive scale.
KV_MIN_SCALE = 2.0**-14


def quantize_kv_rows(
    x: torch.Tensor, dtype: torch.dtype  # x (..., D), dtype a float8 type
) -> tuple[torch.Tensor, torch.Tensor]:  # (..., D) in dtype, (...,) float16
    """Per-row FP8: scale = amax / FP8_MAX (float16, so the cache stores it exactly), value = x / scale."""
    fp8_max = torch.finfo(dtype).max
    xf = x.float()
    amax = xf.abs().amax(dim=-1)  # (...,)
    # Times the reciprocal, not a division: that is what CUDA torch does for a scalar divisor.
    scale = (amax * (1.0 / fp8_max)).clamp(KV_MIN_SCALE, torch.finfo(torch.float16).max).half()  # (...,)
    q = (xf / scale.float().unsqueeze(-1)).clamp(-fp8_max, fp8_max).to(dtype)  # (..., D)
    return q, scale


def store_kv(
    k: torch.Tensor,  # (T, n_kv, D)
    v: torch.Tensor,  # (T, n_kv, D)
    k_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    v_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    slot_mapping: torch.Tensor,  # (T,) int64; negative = skip
    k_scale: torch.Tensor | None = None,  # (num_blocks, block_size, n_kv) float16: FP8 caches only
    v_scale: torch.Tensor | None = None,
) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    for new, cache, scale in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        flat = cache.view(-1, *cache.shape[2:])  # (num_blocks * block_size, n_kv, D)
        if scale is None:
            flat[slots] = new[keep].to(cache.dtype)
        else:
            flat[slots], scale.view(-1, scale.shape[2])[slots] = quantize_kv_rows(new[keep], cache.dtype)


def _pages(cache: torch.Tensor, scale: torch.Tensor | None, blocks: torch.Tensor) -> torch.Tensor:
    """The given blocks of a cache as float32, dequantized: (*blocks.shape, block_size, n_kv, D)."""
    pages = cache[blocks].float()
    return pages if scale is None else pages * scale[blocks].float().unsqueeze(-1)


def prefill_attention(
    q: torch.Tensor,  # (T, H, D)
    k_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    v_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    block_tables: torch.Tensor,  # (B, max_blocks) int32
    seq_lens: torch.Tensor,  # (B,) int32: cached + new tokens per sequence
    query_start_loc: torch.Tensor,  # (B + 1,) int32
    scale: float,
    k_scale: torch.Tensor | None = None,  # (num_blocks, block_size, n_kv) float16: FP8 caches only
    v_scale: torch.Tensor | None = None,
    window: int = 0,  # > 0: each query sees its last `window` keys only (itself included)
    softcap: float = 0.0,  # > 0: scores become softcap * tanh(score / softcap)
) -> torch.Tensor:  # (T, H, D)
    out = torch.empty_like(q)
    num_heads, n_kv = q.shape[1], k_cache.shape[2]
    group = num_heads // n_kv
    block_size = k_cache.shape[1]
    starts = query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        q_lo, q_hi = starts[i], starts[i + 1]
        if q_hi == q_lo:
            continue
        q_len = q_hi - q_lo
        num_blocks = -(-seq_len // block_size)
        # Keys from the first page the first query's window reaches: pages before it are never read.
        lo = _first_page(seq_len - q_len, window, block_size) * block_size
        blocks = block_tables[i, lo // block_size : num_blocks].long()
        k = _pages(k_cache, k_scale, blocks).reshape(-1, n_kv, k_cache.shape[-1])[: seq_len - lo]  # (S, n_kv, D)
        v = _pages(v_cache, v_scale, blocks).reshape(-1, n_kv, v_cache.shape[-1])[: seq_len - lo]  # (S, n_kv, D)
        qi = q[q_lo:q_hi].float().transpose(0, 1)  # (H, q_len, D)
        k = k.repeat_interleave(group, dim=1).transpose(0, 1)  # (H, S, D)
        v = v.repeat_interleave(group, dim=1).transpose(0, 1)  # (H, S, D)
        scores = _capped(torch.matmul(qi, k.transpose(1, 2)) * scale, softcap)  # (H, q_len, S)
        # Query j sits at position seq_len - q_len + j and sees keys up to that position.
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device).unsqueeze(1)  # (q_len, 1)
        k_pos = torch.arange(lo, seq_len, device=q.device).unsqueeze(0)  # (1, S)
        scores.masked_fill_(_hidden(k_pos, q_pos, window), float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[q_lo:q_hi] = torch.matmul(probs, v).transpose(0, 1).to(q.dtype)  # (q_len, H, D)
    return out


# Decode rows are gathered together, padded to the longest sequence: one batched product per
# group instead of one per sequence. The cap bounds the padded K/V copy.
_DECODE_GATHER_TOKENS = 1 << 16


def paged_decode_attention(
    q: torch.Tensor,  # (T, H, D): each sequence's new tokens (one, or a few when verifying drafts)
    k_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    v_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    block_tables: torch.Tensor,  # (B, max_blocks) int32
    seq_lens: torch.Tensor,  # (B,) int32: cached + new tokens per sequence
    query_start_loc: torch.Tensor,  # (B + 1,) int32
    scale: float,
    k_scale: torch.Tensor | None = None,  # (num_blocks, block_size, n_kv) float16: FP8 caches only
    v_scale: torch.Tensor | None = None,
    window: int = 0,  # > 0: each query sees its last `window` keys only (itself included)
    softcap: float = 0.0,  # > 0: scores become softcap * tanh(score / softcap)
    max_query_len: int = 1,  # unused here (the launcher's grid needs it); kept for one signature
) -> torch.Tensor:  # (T, H, D)
    out = torch.empty_like(q)
    num_heads, n_kv, dim = q.shape[1], k_cache.shape[2], q.shape[2]
    group = num_heads // n_kv
    block_size = k_cache.shape[1]
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    q_lens = [starts[i + 1] - starts[i] for i in range(len(lens))]
    decodes = sorted((i for i in range(len(lens)) if q_lens[i]), key=lambda i: lens[i])  # similar lengths: less padding
    lo = 0
    while lo < len(decodes):
        hi = lo + 1
        while hi < len(decodes) and (hi + 1 - lo) * lens[decodes[hi]] <= _DECODE_GATHER_TOKENS:
            hi += 1
        chosen = decodes[lo:hi]
        lo = hi
        b, max_len, width = len(chosen), lens[chosen[-1]], max(q_lens[i] for i in chosen)
        num_blocks = -(-max_len // block_size)
        index = torch.tensor(chosen, device=q.device)
        # Pages from the first any row's window reaches; a row whose window starts later reads its
        # own first page in place of the ones before it (masked): no page before a window is read.
        firsts = torch.tensor([_first_page(lens[i] - q_lens[i], window, block_size) for i in chosen], device=q.device)
        first = int(firsts.min())
        tables = block_tables[index, first:num_blocks].long()  # (b, nb)
        own = (firsts - first).unsqueeze(1)  # (b, 1)
        cols = torch.arange(tables.shape[1], device=q.device).unsqueeze(0)  # (1, nb)
        tables = torch.where(cols < own, tables.gather(1, own), tables)
        key_lo = first * block_size
        k = _pages(k_cache, k_scale, tables).reshape(b, -1, n_kv, dim)[:, : max_len - key_lo]  # (b, S, n_kv, D)
        v = _pages(v_cache, v_scale, tables).reshape(b, -1, n_kv, dim)[:, : max_len - key_lo]  # (b, S, n_kv, D)
        # Query j of a sequence is row starts[i] + j; rows past its q_len are padding (row 0, dropped).
        j = torch.arange(width, device=q.device).unsqueeze(0)  # (1, W)
        q_len = torch.tensor([q_lens[i] for i in chosen], device=q.device).unsqueeze(1)  # (b, 1)
        real = j < q_len  # (b, W)
        rows = torch.where(real, torch.tensor([starts[i] for i in chosen], device=q.device).unsqueeze(1) + j, 0)
        # Query head h reads kv head h // group: (b, n_kv, W * g, D), row j * g + head-in-group.
        qg = q[rows].float().reshape(b, width, n_kv, group, dim).transpose(1, 2).reshape(b, n_kv, width * group, dim)
        scores = _capped(torch.matmul(qg, k.permute(0, 2, 3, 1)) * scale, softcap)  # (b, n_kv, W * g, S)
        seq = torch.tensor([lens[i] for i in chosen], device=q.device).unsqueeze(1)  # (b, 1)
        q_pos = (seq - q_len + j).unsqueeze(2)  # (b, W, 1): the last key each query sees (padding: past all)
        k_pos = torch.arange(key_lo, max_len, device=q.device).view(1, 1, -1)  # (1, 1, S)
        hidden = _hidden(k_pos, q_pos, window).repeat_interleave(group, dim=1)  # (b, W * g, S)
        scores.masked_fill_(hidden[:, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        attn = torch.matmul(probs, v.transpose(1, 2))  # (b, n_kv, W * g, D)
        attn = attn.reshape(b, n_kv, width, group, dim).transpose(1, 2).reshape(b, width, num_heads, dim)
        out[rows[real]] = attn[real].to(q.dtype)  # (rows, H, D)
    return out


def _capped(scores: torch.Tensor, softcap: float) -> torch.Tensor:
    return scores if softcap <= 0 else softcap * torch.tanh(scores / softcap)


def _first_page(first_query: int, window: int, block_size: int) -> int:
    # The page of the first key that query position `first_query` sees (0 without a window).
    return max(0, first_query - window + 1) // block_size if window > 0 else 0


def _hidden(k_pos: torch.Tensor, q_pos: torch.Tensor, window: int) -> torch.Tensor:
    # Keys after the query, and with a window those `window` or more positions before it.
    hidden = k_pos > q_pos
    return hidden | (k_pos <= q_pos - window) if window > 0 else hidden


def rms_norm(
    x: torch.Tensor,  # (T, hidden)
    weight: torch.Tensor,  # (hidden,)
    eps: float,
    residual: torch.Tensor | None = None,  # (T, hidden)
    offset: float = 0.0,  # added to the weight in float32 (Gemma's norms store w - 1)
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    if residual is not None:
        x = x + residual
        new_residual = x
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    out = (normed * (weight.float() + offset)).to(x.dtype)
    return (out, new_residual) if residual is not None else out


def rotary_embedding(
    positions: torch.Tensor,  # (T,) int64
    q: torch.Tensor,  # (T, H, D)
    k: torch.Tensor,  # (T, n_kv, D)
    cos_sin_cache: torch.Tensor,  # (max_position, D)
    is_neox: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    cos_sin = cos_sin_cache[positions]  # (T, D)
    half = cos_sin.shape[-1] // 2
    cos, sin = cos_sin[:, None, :half], cos_sin[:, None, half:]  # (T, 1, D/2)
    return _rotate(q, cos, sin, is_neox), _rotate(k, cos, sin, is_neox)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> torch.Tensor:
    xf = x.float()
    if is_neox:
        x1, x2 = xf.chunk(2, dim=-1)  # (T, H, D/2) each: rotate-half layout (HF Llama)
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    else:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]  # interleaved pairs (GPT-J)
        out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    return out.to(x.dtype)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:  # (T, 2I) -> (T, I)
    gate, up = x.chunk(2, dim=-1)
    return (F.silu(gate.float()) * up.float()).to(x.dtype)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:  # (T, 2I) -> (T, I)
    gate, up = x.chunk(2, dim=-1)
    return (F.gelu(gate.float(), approximate="tanh") * up.float()).to(x.dtype)


class QuantizedExperts(NamedTuple):
    """Every expert's weight of one stacked projection (w13 or w2), quantized; layouts in the header."""

    weight: torch.Tensor  # fp8: (E, N, K) float8_e4m3fn; integers: (E, K / P, N) int32
    scale: torch.Tensor  # fp8: (E, N) float32; integers: (E, NG, N)
    zeros: torch.Tensor | None  # integers: (E, NG, N) in scale's dtype; None for fp8
    group_size: int  # integers: input channels per group; 0 for fp8
    bits: int  # 8 for fp8; 4 or 8 for integers

    @property
    def is_fp8(self) -> bool:
        return self.weight.dtype == torch.float8_e4m3fn

    def dims(self) -> tuple[int, int, int]:  # (E, N, K), as a dense stack's shape
        e, rows, cols = self.weight.shape
        return (e, rows, cols) if self.is_fp8 else (e, cols, rows * (32 // self.bits))


def dequantize_expert(w: torch.Tensor | QuantizedExperts, expert: int) -> torch.Tensor:  # (N, K) float32
    if isinstance(w, torch.Tensor):
        return w[expert].float()
    if w.is_fp8:
        return w.weight[expert].float() * w.scale[expert].float().unsqueeze(1)
    assert w.zeros is not None
    return dequantize_int_weight(w.weight[expert].t(), w.scale[expert].t(), w.zeros[expert].t(), w.group_size, w.bits)


def fused_moe(
    x: torch.Tensor,  # (T, H)
    w13: torch.Tensor | QuantizedExperts,  # (E, 2I, H): each expert's gate rows, then its up rows
    w2: torch.Tensor | QuantizedExperts,  # (E, H, I)
    topk_weights: torch.Tensor,  # (T, top_k) float32: routing weights
    topk_ids: torch.Tensor,  # (T, top_k) int: routed experts
) -> torch.Tensor:  # (T, H) in x's dtype
    """A loop over the experts that any token chose: each one's SwiGLU MLP on its tokens, weighted."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # (T, H)
    for expert in topk_ids.unique().tolist():
        tokens, slots = torch.nonzero(topk_ids == expert, as_tuple=True)  # (n,), (n,)
        gate_up = x[tokens].float() @ dequantize_expert(w13, expert).t()  # (n, 2I)
        gate, up = gate_up.chunk(2, dim=-1)
        y = (F.silu(gate) * up) @ dequantize_expert(w2, expert).t()  # (n, H)
        out.index_add_(0, tokens, y * topk_weights[tokens, slots].float().unsqueeze(1))
    return out.to(x.dtype)


def lora_add(
    out: torch.Tensor,  # (T, N), updated in place
    x: torch.Tensor,  # (T, K)
    lora_a: torch.Tensor,  # (L, R, K)
    lora_b: torch.Tensor,  # (L, N, R), scaled
    seg_starts: torch.Tensor,  # (S + 1,) int32
    seg_slots: torch.Tensor,  # (S,) int32, -1 = base
    max_seg_len: int,
) -> None:
    """out[rows of s] += x[rows] @ A[slot].T @ B[slot].T for each segment s of an adapter slot
    (genfleet_kernels/lora.py). One pair of GEMMs per slot of the step, over that slot's rows gathered."""
    starts, slots = seg_starts.tolist(), seg_slots.tolist()
    rows_of: dict[int, list[int]] = {}
    for s, slot in enumerate(slots):
        if slot >= 0:
            rows_of.setdefault(slot, []).extend(range(starts[s], starts[s + 1]))
    for slot, rows in rows_of.items():
        if rows[-1] - rows[0] + 1 == len(rows):  # one run of rows: a view, no gather
            x_rows = x[rows[0] : rows[-1] + 1]
            delta = (x_rows.float() @ lora_a[slot].float().T) @ lora_b[slot].float().T  # (n, N)
            out[rows[0] : rows[-1] + 1] += delta.to(out.dtype)
            continue
        index = torch.tensor(rows, device=x.device)
        delta = (x[index].float() @ lora_a[slot].float().T) @ lora_b[slot].float().T  # (n, N)
        out.index_add_(0, index, delta.to(out.dtype))


def pack_int32(values: torch.Tensor, bits: int) -> torch.Tensor:  # (..., W * P) -> (..., W) int32
    """Pack unsigned `bits`-bit integers along the last dim, value i of each word at bits i*bits."""
    per = 32 // bits
    v = values.to(torch.int64).reshape(*values.shape[:-1], -1, per)  # (..., W, P)
    shifts = torch.arange(per, dtype=torch.int64, device=values.device) * bits
    word = (v << shifts).sum(-1)  # (..., W) in [0, 2**32)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def unpack_int32(packed: torch.Tensor, bits: int) -> torch.Tensor:  # (..., W) int32 -> (..., W * P) int32
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int32, device=packed.device) * bits
    values = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # (..., W, P); the mask undoes sign fill
    return values.reshape(*packed.shape[:-1], -1)


def dequantize_int_weight(
    qweight: torch.Tensor,  # (N, K / P) int32
    scales: torch.Tensor,  # (N, NG)
    zeros: torch.Tensor,  # (N, NG), integer values
    group_size: int,
    bits: int,
) -> torch.Tensor:  # (N, K) float32, channels in stored order
    q = unpack_int32(qweight, bits)  # (N, K)
    group = torch.arange(q.shape[1], device=q.device) // group_size  # (K,)
    return (q.float() - zeros.float()[:, group]) * scales.float()[:, group]


def int_weight_linear(
    x: torch.Tensor,  # (T, K)
    qweight: torch.Tensor,  # (N, K / P) int32
    scales: torch.Tensor,  # (N, NG)
    zeros: torch.Tensor,  # (N, NG)
    group_size: int,
    bits: int,
    perm: torch.Tensor | None = None,  # (K,) int64: stored channel i reads x[:, perm[i]]
    bias: torch.Tensor | None = None,  # (N,)
) -> torch.Tensor:  # (T, N) in x's dtype
    if perm is not None:
        x = x[:, perm]
    weight = dequantize_int_weight(qweight, scales, zeros, group_size, bits)  # (N, K)
    return F.linear(x.float(), weight, None if bias is None else bias.float()).to(x.dtype)


# Rows of zeros still get a positive scale (and quantize to zeros).
FP8_MIN_ROW_SCALE = 1e-12


def quantize_fp8_rows(
    x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn  # x (M, K)
) -> tuple[torch.Tensor, torch.Tensor]:  # (M, K) in dtype, (M, 1) float32
    """Dynamic per-token FP8: row m is x[m] / s[m] with s[m] = amax(|x[m]|) / FP8_MAX."""
    fp8_max = torch.finfo(dtype).max
    xf = x.float()
    # Times the reciprocal, not a division: that is what CUDA torch does for a scalar divisor.
    scale = (xf.abs().amax(dim=-1, keepdim=True) * (1.0 / fp8_max)).clamp(min=FP8_MIN_ROW_SCALE)  # (M, 1)
    return (xf / scale).clamp(-fp8_max, fp8_max).to(dtype), scale


def w8_linear(
    x: torch.Tensor,  # (M, K)
    weight: torch.Tensor,  # (N, K) int8 or float8
    scale: torch.Tensor,  # (N,) float32: weight row n is weight[n] * scale[n]
    bias: torch.Tensor | None = None,  # (N,)
) -> torch.Tensor:  # (M, N) in x's dtype
    dense = weight.float() * scale.float().unsqueeze(1)  # (N, K)
    return F.linear(x.float(), dense, None if bias is None else bias.float()).to(x.dtype)


def w8a8_linear(
    x: torch.Tensor,  # (M, K)
    weight: torch.Tensor,  # (N, K) float8
    scale: torch.Tensor,  # (N,) float32: weight row n is weight[n] * scale[n]
    bias: torch.Tensor | None = None,  # (N,)
) -> torch.Tensor:  # (M, N) in x's dtype
    """x quantized per row to weight's FP8 format first (`quantize_fp8_rows`), as torch._scaled_mm meets it."""
    xq, x_scale = quantize_fp8_rows(x, weight.dtype)  # (M, K), (M, 1)
    out = F.linear(xq.float(), weight.float()) * x_scale * scale.float().unsqueeze(0)  # (M, N)
    return (out if bias is None else out + bias.float()).to(x.dtype)


# bitsandbytes' 4-bit codebooks (bitsandbytes.functional.get_4bit_type): NF4, the normal-float
# quantiles, and its FP4 (sign, 2 exponent bits, 1 mantissa bit, normalized to a maximum of 1).
CODEBOOKS_4BIT = {
    "nf4": (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0),
    "fp4": (0.0, 0.0052083334885537624, 0.6666666865348816, 1.0, 0.3333333432674408, 0.5, 0.1666666716337204,
            0.25, 0.0, -0.0052083334885537624, -0.6666666865348816, -1.0, -0.3333333432674408, -0.5,
            -0.1666666716337204, -0.25),
}


def quantize_4bit(
    w: torch.Tensor, code: torch.Tensor, block: int = 64  # w (N, K), code (16,) float32
) -> tuple[torch.Tensor, torch.Tensor]:  # (N, K / 2) uint8, (N, K / block) float32
    """bitsandbytes' blockwise 4-bit: each run of `block` weights along a row is divided by its
    absmax and replaced by the index of the nearest codebook value; element 2j of a row goes to the
    high nibble of byte j, element 2j + 1 to the low one."""
    n, k = w.shape
    blocks = w.float().reshape(n, k // block, block)  # (N, K / B, B)
    absmax = blocks.abs().amax(-1)  # (N, K / B)
    normed = blocks / absmax.clamp(min=1e-30).unsqueeze(-1)
    idx = (normed.unsqueeze(-1) - code.to(w.device)).abs().argmin(-1).reshape(n, k)  # (N, K)
    return ((idx[:, 0::2] << 4) | idx[:, 1::2]).to(torch.uint8), absmax


def dequantize_4bit(
    packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor  # (N, K / 2) uint8, (N, K / B), (16,)
) -> torch.Tensor:  # (N, K) float32
    n, half = packed.shape
    idx = torch.stack([packed >> 4, packed & 15], dim=-1).reshape(n, 2 * half).long()  # (N, K)
    block = 2 * half // absmax.shape[1]
    return code.float().to(packed.device)[idx] * absmax.float().repeat_interleave(block, dim=1)
