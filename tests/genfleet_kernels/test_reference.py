"""genfleet_kernels/reference.py against independent dense formulations and transformers' rotary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genfleet_kernels import reference as ref
from worker.models.rotary import build_cos_sin_cache

BLOCK = 4


def _dense_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of the last q_len positions of one sequence over its S keys: (q_len, H, D)."""
    q_len, seq_len = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    qh = q.float().transpose(0, 1)  # (H, q_len, D)
    kh = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # (H, S, D)
    vh = v.float().repeat_interleave(group, dim=1).transpose(0, 1)  # (H, S, D)
    # Bottom-right aligned causal mask: query j is position seq_len - q_len + j.
    mask = torch.ones(q_len, seq_len, dtype=torch.bool).tril(diagonal=seq_len - q_len)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)  # (H, q_len, D)
    return out.transpose(0, 1)


@pytest.mark.parametrize("gather_cap", [1 << 16, 8])  # decodes batched together, or one by one
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_paged_attention_equals_dense_causal(dtype: torch.dtype, gather_cap: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ref, "_DECODE_GATHER_TOKENS", gather_cap)
    gen = torch.Generator().manual_seed(0)
    heads, n_kv, dim, num_blocks = 8, 2, 16, 48
    # (cached prefix, new tokens): a fresh prefill, a chunk after a prefix, decodes, an empty row.
    shapes = [(0, 7), (12, 1), (9, 5), (3, 1), (5, 0), (0, 1), (30, 1)]
    k_cache = torch.zeros(num_blocks, BLOCK, n_kv, dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    free = torch.randperm(num_blocks, generator=gen).tolist()  # scattered, non-contiguous blocks
    tables, full_k, full_v, qs, slots = [], [], [], [], []
    max_blocks = max(-(-(c + n) // BLOCK) for c, n in shapes)
    for cached, new in shapes:
        total = cached + new
        table = [free.pop() for _ in range(-(-total // BLOCK))]
        tables.append(table + [0] * (max_blocks - len(table)))
        k = torch.randn(total, n_kv, dim, generator=gen).to(dtype)
        v = torch.randn(total, n_kv, dim, generator=gen).to(dtype)
        full_k.append(k)
        full_v.append(v)
        qs.append(torch.randn(new, heads, dim, generator=gen).to(dtype))
        slots.extend(table[p // BLOCK] * BLOCK + p % BLOCK for p in range(total))
    # Everything (prefix and new tokens) goes through store_kv, as a run of earlier steps would.
    ref.store_kv(torch.cat(full_k), torch.cat(full_v), k_cache, v_cache, torch.tensor(slots))
    starts = [0]
    for _, new in shapes:
        starts.append(starts[-1] + new)
    scale = dim**-0.5
    q, tables_t = torch.cat(qs), torch.tensor(tables, dtype=torch.int32)
    seq_lens, starts_t = torch.tensor([c + n for c, n in shapes], dtype=torch.int32), torch.tensor(starts, dtype=torch.int32)
    out = ref.prefill_attention(q, k_cache, v_cache, tables_t, seq_lens, starts_t, scale)
    assert out.shape == (starts[-1], heads, dim) and out.dtype == dtype
    # The decode reference over the one-token rows alone.
    one = [i for i, (_, new) in enumerate(shapes) if new == 1]
    rows = torch.tensor([starts[i] for i in one])
    decoded = ref.paged_decode_attention(
        q[rows], k_cache, v_cache, tables_t[one], seq_lens[one], torch.arange(len(one) + 1, dtype=torch.int32), scale
    )
    assert decoded.shape == (len(one), heads, dim) and decoded.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for i, (_, new) in enumerate(shapes):
        if new:
            want = _dense_causal(qs[i], full_k[i], full_v[i], scale)
            torch.testing.assert_close(out[starts[i] : starts[i + 1]].float(), want, rtol=tol, atol=tol)
            if new == 1:
                torch.testing.assert_close(decoded[one.index(i)].float(), want[0], rtol=tol, atol=tol)


def test_store_kv_writes_slots_and_skips_negative_ones() -> None:
    k_cache = torch.zeros(3, BLOCK, 1, 2)
    v_cache = torch.zeros_like(k_cache)
    k = torch.arange(1, 7, dtype=torch.float32).reshape(3, 1, 2)
    v = -k
    ref.store_kv(k, v, k_cache, v_cache, torch.tensor([5, -1, 11]))  # block 1 offset 1; skip; block 2 offset 3
    assert k_cache[1, 1, 0].tolist() == [1.0, 2.0] and v_cache[1, 1, 0].tolist() == [-1.0, -2.0]
    assert k_cache[2, 3, 0].tolist() == [5.0, 6.0]
    assert int((k_cache != 0).sum()) == 4 and int((v_cache != 0).sum()) == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_with_and_without_fused_residual(dtype: torch.dtype) -> None:
    x = torch.randn(5, 32).to(dtype)
    residual = torch.randn(5, 32).to(dtype)
    weight = torch.randn(32).to(dtype)
    norm = torch.nn.RMSNorm(32, eps=1e-6, dtype=torch.float32)
    with torch.no_grad():
        norm.weight.copy_(weight.float())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(ref.rms_norm(x, weight, 1e-6).float(), norm(x.float()), rtol=tol, atol=tol)
    out, new_residual = ref.rms_norm(x, weight, 1e-6, residual)
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(out.float(), norm((x + residual).float()), rtol=tol, atol=tol)


def test_rotary_neox_matches_transformers_and_interleaved_matches_complex_product() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    dim, max_pos = 16, 64
    cache = build_cos_sin_cache(dim, max_pos, 10000.0)
    positions = torch.tensor([0, 5, 6, 63, 17])
    q, k = torch.randn(5, 4, dim), torch.randn(5, 2, dim)
    got_q, got_k = ref.rotary_embedding(positions, q, k, cache)
    cos = torch.cat([cache[positions, : dim // 2]] * 2, dim=-1)  # (T, D) in HF's duplicated layout
    sin = torch.cat([cache[positions, dim // 2 :]] * 2, dim=-1)
    want_q, want_k = apply_rotary_pos_emb(q.transpose(0, 1), k.transpose(0, 1), cos, sin, unsqueeze_dim=0)  # (H, T, D)
    torch.testing.assert_close(got_q, want_q.transpose(0, 1))
    torch.testing.assert_close(got_k, want_k.transpose(0, 1))
    # GPT-J layout: consecutive pairs are complex numbers multiplied by e^(i * angle).
    got_q, _ = ref.rotary_embedding(positions, q, k, cache, is_neox=False)
    rot = torch.polar(torch.ones(5, dim // 2), torch.atan2(cache[positions, dim // 2 :], cache[positions, : dim // 2]))
    want = torch.view_as_real(torch.view_as_complex(q.reshape(5, 4, dim // 2, 2)) * rot[:, None]).flatten(-2)
    torch.testing.assert_close(got_q, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_silu_and_mul(dtype: torch.dtype) -> None:
    x = torch.randn(6, 20).to(dtype)
    out = ref.silu_and_mul(x)
    assert out.shape == (6, 10) and out.dtype == dtype
    want = F.silu(x[:, :10].float()) * x[:, 10:].float()
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize(("fp8", "step"), [(torch.float8_e4m3fn, 2**-4), (torch.float8_e5m2, 2**-3)])
def test_fp8_kv_rows_keep_fp8_precision_and_attention_reads_them_dequantized(fp8: torch.dtype, step: float) -> None:
    gen = torch.Generator().manual_seed(6)
    heads, n_kv, dim, seq = 4, 2, 16, 11
    k = torch.randn(seq, n_kv, dim, generator=gen) * torch.logspace(-3, 2, seq).view(seq, 1, 1)  # rows of any size
    v = torch.randn(seq, n_kv, dim, generator=gen)
    k_cache = torch.zeros(3, BLOCK, n_kv, dim).to(fp8)
    v_cache = torch.zeros_like(k_cache)
    k_scale = torch.zeros(3, BLOCK, n_kv, dtype=torch.float16)
    v_scale = torch.zeros_like(k_scale)
    ref.store_kv(k, v, k_cache, v_cache, torch.arange(seq), k_scale, v_scale)
    back_k = (k_cache.float() * k_scale.float().unsqueeze(-1)).view(-1, n_kv, dim)[:seq]  # (S, n_kv, D)
    back_v = (v_cache.float() * v_scale.float().unsqueeze(-1)).view(-1, n_kv, dim)[:seq]
    # Each row keeps FP8's relative precision against its own largest value, whatever its size.
    for x, back in ((k, back_k), (v, back_v)):
        amax = x.abs().amax(-1, keepdim=True)
        assert ((back - x).abs() <= step * amax).all()
    q = torch.randn(seq, heads, dim, generator=gen)
    out = ref.prefill_attention(
        q, k_cache, v_cache, torch.tensor([[0, 1, 2]], dtype=torch.int32), torch.tensor([seq], dtype=torch.int32),
        torch.tensor([0, seq], dtype=torch.int32), dim**-0.5, k_scale, v_scale,
    )
    torch.testing.assert_close(out, _dense_causal(q, back_k, back_v, dim**-0.5), rtol=1e-5, atol=1e-5)
