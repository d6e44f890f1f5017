"""Kernel timings on a GPU: Triton launcher vs torch reference (triton.testing perf reports), and
the per-kernel cost of one decode step of a model shape.

    python -m genfleet_kernels.bench            # perf reports for every kernel, printed as tables
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import triton
import triton.testing

from genfleet_kernels import reference as ref
from genfleet_kernels.fused_moe import fused_moe
from genfleet_kernels.lora import lora_add
from genfleet_kernels.paged_decode_attention import paged_decode_attention
from genfleet_kernels.prefill_attention import prefill_attention
from genfleet_kernels.rms_norm import rms_norm
from genfleet_kernels.rotary_embedding import rotary_embedding
from genfleet_kernels.rotary_store_kv import rotary_store_kv
from genfleet_kernels.silu_and_mul import silu_and_mul
from genfleet_kernels.store_kv import store_kv

__all__ = ["decode_step_breakdown", "gemv_report", "moe_report", "main"]

_BLOCK = 16


def _us(fn: Any) -> float:
    return float(triton.testing.do_bench(fn, warmup=10, rep=40)) * 1e3


def _graph_us(fn: Any) -> float:
    # Replayed from a CUDA graph, as decode runs: GPU time without the host's launch cost.
    fn()
    return float(triton.testing.do_bench_cudagraph(fn, rep=40)) * 1e3


def _cos_sin_table(positions: int, d: int) -> torch.Tensor:
    # The rotary kernel reads the table, whatever its values: the model's own is worker/models/rotary.py.
    return torch.rand(positions, d, dtype=torch.float32, device="cuda")  # (P, D) [cos | sin]


def _paged(batch: int, ctx: int, q_len: int, nh: int, nkv: int, d: int) -> tuple[torch.Tensor, ...]:
    blocks_per = -(-ctx // _BLOCK)
    num_blocks = batch * blocks_per
    kc = torch.randn(num_blocks, _BLOCK, nkv, d, dtype=torch.bfloat16, device="cuda")
    vc = torch.randn_like(kc)
    tables = torch.randperm(num_blocks, device="cuda", dtype=torch.int32).view(batch, blocks_per)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    qsl = torch.arange(batch + 1, dtype=torch.int32, device="cuda") * q_len
    q = torch.randn(batch * q_len, nh, d, dtype=torch.bfloat16, device="cuda")
    return q, kc, vc, tables, seq_lens, qsl


def decode_step_breakdown(cfg: dict[str, Any], batch: int, ctx: int) -> dict[str, float]:
    """GPU microseconds per decode step in each op (one launch replayed from a graph, times the
    layers); a name in parentheses is work a fused op does, outside the step's sum."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    d, nh, nkv, vocab = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    bf = dict(dtype=torch.bfloat16, device="cuda")
    x = torch.randn(batch, h, **bf)  # (B, hidden)
    w_qkv = torch.randn((nh + 2 * nkv) * d, h, **bf)
    w_o = torch.randn(h, nh * d, **bf)
    w_gu = torch.randn(2 * inter, h, **bf)
    w_down = torch.randn(h, inter, **bf)
    w_head = torch.randn(vocab, h, **bf)
    norm_w = torch.ones(h, **bf)
    q, kc, vc, tables, seq_lens, qsl = _paged(batch, ctx, 1, nh, nkv, d)
    k_new = torch.randn(batch, nkv, d, **bf)
    v_new = torch.randn(batch, nkv, d, **bf)
    slots = torch.arange(batch, device="cuda") * _BLOCK
    positions = torch.full((batch,), ctx - 1, device="cuda")
    cache = _cos_sin_table(ctx + 1, d)
    gu = torch.randn(batch, 2 * inter, **bf)
    a = torch.randn(batch, inter, **bf)
    o_in = torch.randn(batch, nh * d, **bf)
    scale = d**-0.5
    per_layer = {
        "rms_norm x2": 2 * _graph_us(lambda: rms_norm(x, norm_w, 1e-5, x)),
        "qkv GEMM": _graph_us(lambda: torch.matmul(x, w_qkv.t())),
        "(unfused: rotary)": _graph_us(lambda: rotary_embedding(positions, q, k_new, cache)),
        "(unfused: store_kv)": _graph_us(lambda: store_kv(k_new, v_new, kc, vc, slots)),
        "rotary_store_kv": _graph_us(lambda: rotary_store_kv(positions, q, k_new, v_new, cache, kc, vc, slots)),
        "attention": _graph_us(lambda: paged_decode_attention(q, kc, vc, tables, seq_lens, qsl, scale)),
        "o GEMM": _graph_us(lambda: torch.matmul(o_in, w_o.t())),
        "gate_up GEMM": _graph_us(lambda: torch.matmul(x, w_gu.t())),
        "silu_and_mul": _graph_us(lambda: silu_and_mul(gu)),
        "down GEMM": _graph_us(lambda: torch.matmul(a, w_down.t())),
    }
    out = {name: us * layers for name, us in per_layer.items()}
    out["lm_head GEMM"] = _graph_us(lambda: torch.matmul(x, w_head.t()))
    return out


def _report(name: str, x_names: list[str], x_vals: list[Any], args: dict[str, Any]) -> Any:
    return triton.testing.perf_report(
        triton.testing.Benchmark(
            x_names=x_names, x_vals=x_vals, line_arg="impl", line_vals=["triton", "torch"],
            line_names=["Triton", "torch reference"], ylabel="µs", plot_name=name, args=args,
        )
    )


@_report("decode-attention-8b", ["batch", "ctx"], [(1, 1024), (1, 8192), (1, 32768), (16, 2048), (64, 384), (256, 1024)],
         {"nh": 32, "nkv": 8, "d": 128})
def bench_decode_attention(batch: int, ctx: int, nh: int, nkv: int, d: int, impl: str) -> float:
    q, kc, vc, tables, seq_lens, qsl = _paged(batch, ctx, 1, nh, nkv, d)
    fn = paged_decode_attention if impl == "triton" else ref.paged_decode_attention
    return _us(lambda: fn(q, kc, vc, tables, seq_lens, qsl, d**-0.5))


@_report("prefill-attention-8b", ["batch", "q_len"], [(1, 1024), (8, 1024), (1, 4096)], {"nh": 32, "nkv": 8, "d": 128})
def bench_prefill_attention(batch: int, q_len: int, nh: int, nkv: int, d: int, impl: str) -> float:
    q, kc, vc, tables, seq_lens, qsl = _paged(batch, q_len, q_len, nh, nkv, d)
    fn = prefill_attention if impl == "triton" else ref.prefill_attention
    return _us(lambda: fn(q, kc, vc, tables, seq_lens, qsl, d**-0.5))


@_report("rms-norm-residual", ["tokens"], [1, 64, 4096], {"hidden": 4096})
def bench_rms_norm(tokens: int, hidden: int, impl: str) -> float:
    x = torch.randn(tokens, hidden, dtype=torch.bfloat16, device="cuda")
    w = torch.ones(hidden, dtype=torch.bfloat16, device="cuda")
    fn = rms_norm if impl == "triton" else ref.rms_norm
    return _us(lambda: fn(x, w, 1e-5, x))


@_report("silu-and-mul", ["tokens"], [1, 64, 4096], {"inter": 14336})
def bench_silu(tokens: int, inter: int, impl: str) -> float:
    x = torch.randn(tokens, 2 * inter, dtype=torch.bfloat16, device="cuda")
    fn = silu_and_mul if impl == "triton" else ref.silu_and_mul
    return _us(lambda: fn(x))


@_report("rotary-llama3", ["tokens"], [1, 64, 4096], {"nh": 32, "nkv": 8, "d": 128})
def bench_rotary(tokens: int, nh: int, nkv: int, d: int, impl: str) -> float:
    q = torch.randn(tokens, nh, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(tokens, nkv, d, dtype=torch.bfloat16, device="cuda")
    pos = torch.arange(tokens, device="cuda")
    cache = _cos_sin_table(tokens, d)
    fn = rotary_embedding if impl == "triton" else ref.rotary_embedding
    return _us(lambda: fn(pos, q, k, cache))


@_report("store-kv", ["tokens"], [1, 64, 4096], {"nkv": 8, "d": 128})
def bench_store_kv(tokens: int, nkv: int, d: int, impl: str) -> float:
    k = torch.randn(tokens, nkv, d, dtype=torch.bfloat16, device="cuda")
    cache = torch.zeros(-(-tokens // _BLOCK) + 1, _BLOCK, nkv, d, dtype=torch.bfloat16, device="cuda")
    v_cache = torch.zeros_like(cache)
    slots = torch.arange(tokens, device="cuda")
    fn = store_kv if impl == "triton" else ref.store_kv
    return _us(lambda: fn(k, k, cache, v_cache, slots))


@_report("lora-add-8b-qkv", ["tokens", "adapters"], [(64, 4), (64, 1), (1024, 4), (4096, 4)], {"rank": 16})
def bench_lora_add(tokens: int, adapters: int, rank: int, impl: str) -> float:
    # Llama-3.1-8B's fused qkv (4096 -> 6144, three parts: the stacked rank is 3r); rows spread
    # over `adapters` slots in runs of tokens / (4 * adapters) (decode-like runs at 64 tokens).
    k_in, n_out, parts = 4096, 6144, 3
    x = torch.randn(tokens, k_in, dtype=torch.bfloat16, device="cuda")
    a = torch.randn(adapters, parts * rank, k_in, dtype=torch.bfloat16, device="cuda") * 0.01
    b = torch.randn(adapters, n_out, parts * rank, dtype=torch.bfloat16, device="cuda") * 0.01
    out = torch.zeros(tokens, n_out, dtype=torch.bfloat16, device="cuda")
    runs = 4 * adapters
    starts = torch.linspace(0, tokens, runs + 1, device="cuda").round().to(torch.int32)
    slots = (torch.arange(runs, device="cuda") % adapters).to(torch.int32)
    longest = int((starts[1:] - starts[:-1]).max())
    fn = lora_add if impl == "triton" else ref.lora_add
    return _us(lambda: fn(out, x, a, b, starts, slots, longest))


# (name, K, N) of the one-row linears of the benchmark shapes.
GEMV_SHAPES = [
    ("8b qkv", 4096, 6144), ("8b o", 4096, 4096), ("8b gate_up", 4096, 28672), ("8b down", 14336, 4096),
    ("8b lm_head", 4096, 128256), ("135m qkv", 576, 960), ("135m gate_up", 576, 3072), ("135m down", 1536, 576),
]
GEMV_CONFIGS = [(4, 2048, 4, 3), (4, 1024, 2, 3), (4, 512, 4, 3), (8, 512, 4, 3), (8, 1024, 8, 3), (16, 512, 8, 3)]


def gemv_report() -> list[str]:
    """One-row linear: cuBLAS (torch) against linear_one_row's configs, graph-replayed GPU µs."""
    from genfleet_kernels.linear_one_row import linear_one_row

    lines = []
    for name, k, n in GEMV_SHAPES:
        x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
        want = torch.nn.functional.linear(x, w)
        torch_us = _graph_us(lambda: torch.nn.functional.linear(x, w))
        cells = []
        for bn, bk, warps, stages in GEMV_CONFIGS:
            got = linear_one_row(x, w, None, bn, bk, warps, stages)
            torch.testing.assert_close(got.float(), want.float(), atol=5e-2, rtol=5e-2)
            us = _graph_us(lambda: linear_one_row(x, w, None, bn, bk, warps, stages))
            cells.append(f"{bn}x{bk}/w{warps}: {us:.1f}")
        gbs = 2 * n * k / torch_us / 1e3
        lines.append(f"{name} ({k}->{n}): torch {torch_us:.1f} µs ({gbs:.0f} GB/s); triton " + ", ".join(cells))
    return lines


def moe_report(hidden: int, inter: int, experts: int, top_k: int, token_counts: tuple[int, ...]) -> list[str]:
    """One MoE layer's experts, bf16: the fused kernel against the reference's loop of torch
    matmuls per expert, eagerly (the loop reads which experts were chosen on the host), and the
    fused kernel's bytes-read floor share at the card's copy rate where `copy_bytes_per_s` is known.
    Then the same layer's experts in FP8 (a scale per expert and row) and int4 (groups of 128),
    graph-replayed, each checked against the reference first."""
    bf = dict(dtype=torch.bfloat16, device="cuda")
    w13 = torch.randn(experts, 2 * inter, hidden, **bf) / hidden**0.5  # (E, 2I, H)
    w2 = torch.randn(experts, hidden, inter, **bf) / inter**0.5  # (E, H, I)
    quantized = {"fp8": (_fp8_stack(w13), _fp8_stack(w2)), "int4": (_int4_stack(w13), _int4_stack(w2))}
    lines = []
    for tokens in token_counts:
        x = torch.randn(tokens, hidden, **bf)
        logits = torch.randn(tokens, experts, device="cuda")
        weights, ids = torch.softmax(logits, -1).topk(top_k, dim=-1)  # (T, k) each
        touched = int(ids.unique().numel())
        fused = _us(lambda: fused_moe(x, w13, w2, weights, ids))
        fused_graphed = _graph_us(lambda: fused_moe(x, w13, w2, weights, ids))
        unsplit = _graph_us(lambda: fused_moe(x, w13, w2, weights, ids, down_split_k=1))  # DOWN_SPLIT_K's worth
        loop = _us(lambda: ref.fused_moe(x, w13, w2, weights, ids))
        gb = touched * 3 * hidden * inter * 2 / 1e9
        cells = []
        for name, (q13, q2) in quantized.items():
            torch.testing.assert_close(fused_moe(x, q13, q2, weights, ids).float(),
                                       ref.fused_moe(x, q13, q2, weights, ids).float(), atol=5e-2, rtol=5e-2)
            us = _graph_us(lambda: fused_moe(x, q13, q2, weights, ids))
            read = touched * sum(_expert_bytes(w) for w in (q13, q2)) / 1e9
            cells.append(f"{name} {us:.0f} µs ({fused_graphed / us:.2f}x bf16, {read / (us * 1e-6):.0f} GB/s)")
        lines.append(f"MoE layer {experts}x(H {hidden}, FFN {inter}) top-{top_k}, {tokens} tokens ({touched} experts "
                     f"touched, {gb:.2f} GB of their weights): fused {fused:.0f} µs eager / {fused_graphed:.0f} µs "
                     f"graph-replayed ({unsplit:.0f} µs with the down GEMM's K unsplit), per-expert torch loop {loop:.0f} µs ({loop / fused:.1f}x); "
                     f"{gb / (fused_graphed * 1e-6):.0f} GB/s of expert weights read; graph-replayed " + ", ".join(cells))
    return lines


def _fp8_stack(w: torch.Tensor) -> ref.QuantizedExperts:  # (E, N, K) -> e4m3, a scale per (expert, row)
    weight, scale = ref.quantize_fp8_rows(w.reshape(-1, w.shape[2]))
    return ref.QuantizedExperts(weight.view(w.shape), scale.view(w.shape[:2]), None, 0, 8)


def _int4_stack(w: torch.Tensor, group: int = 128) -> ref.QuantizedExperts:  # random int4 of w's shape
    e, n, k = w.shape
    q = torch.randint(-(2**31), 2**31, (e, k // 8, n), device=w.device).to(torch.int32)  # (E, K / 8, N) random words
    scales = torch.full((e, k // group, n), 2.0 / (16 * k**0.5), dtype=torch.bfloat16, device=w.device)
    return ref.QuantizedExperts(q, scales, torch.full_like(scales, 8.0), group, 4)


def _expert_bytes(w: ref.QuantizedExperts) -> int:  # one expert's
    tensors = [w.weight, w.scale] + ([w.zeros] if w.zeros is not None else [])
    return sum(t[0].numel() * t.element_size() for t in tensors)


def main() -> int:
    for bench in (bench_decode_attention, bench_prefill_attention, bench_rms_norm, bench_silu, bench_rotary, bench_store_kv,
                  bench_lora_add):
        bench.run(print_data=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
