"""The card's two ceilings and what a step must at least cost on it: load/bench_gpu.py's rooflines.

A decode step reads its weights (and the KV of every context token) once: bytes over the measured
copy rate; a prefill computes 2 FLOPs per parameter per token (plus attention): FLOPs over the
measured bf16 GEMM rate. Each table row carries its figure beside the roofline of its workload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Card", "Floor", "Row", "floor_for", "markdown_table", "measure_card", "roofline_flood", "roofline_static",
           "time_cuda"]

@dataclass(slots=True)
class Card:
    name: str
    copy_bytes_per_s: float  # device-to-device copy, bytes read + written per second
    gemm_flops: float  # bf16 8192^3 matmul


@dataclass(slots=True)
class Row:
    model: str
    workload: str
    out_tok_s: float
    roofline_tok_s: float | None = None
    baseline_tok_s: float | None = None
    note: str = ""
    versus: str = ""  # "a", "b" or "c": a variant's row, compared with bf16's row of that workload


def markdown_table(rows: list[Row]) -> list[str]:
    """The rows beside their rooflines and baselines, one markdown table line each after the header."""
    lines = ["| model | workload | out tok/s | roofline tok/s | % of roofline | transformers tok/s | x transformers | detail |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        roof = f"{row.roofline_tok_s:,.0f}" if row.roofline_tok_s else "-"
        pct = f"{100 * row.out_tok_s / row.roofline_tok_s:.0f}%" if row.roofline_tok_s else "-"
        base = f"{row.baseline_tok_s:,.1f}" if row.baseline_tok_s else "-"
        ratio = f"{row.out_tok_s / row.baseline_tok_s:.1f}x" if row.baseline_tok_s else "-"
        lines.append(f"| {row.model} | {row.workload} | {row.out_tok_s:,.1f} | {roof} | {pct} | {base} | {ratio} | {row.note} |")
    return lines


def measure_card() -> Card:
    import torch

    n = 1 << 29  # 1 GiB of bf16
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    copy_s = time_cuda(lambda: dst.copy_(src), 20)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    gemm_s = time_cuda(lambda: a @ b, 20)
    del src, dst, a, b
    return Card(torch.cuda.get_device_name(), 2 * n * 2 / copy_s, 2 * 8192**3 / gemm_s)


def time_cuda(fn: Any, iters: int) -> float:
    import torch

    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


@dataclass(slots=True)
class Floor:
    """What a step must at least cost on this card: bytes over bandwidth, FLOPs over GEMM rate."""

    weight_bytes: int  # read by every forward step (the embedding table only once, unless tied)
    matmul_params: int  # parameters in the linear layers a token passes (2 FLOPs each per token)
    kv_bytes_per_token: int
    attn_flops_per_ctx: int  # per query token per context token
    card: Card
    # Mixture of experts: bytes of one expert over all layers (not in weight_bytes), (experts, top_k).
    expert_bytes: int = 0
    experts: tuple[int, int] = (0, 0)

    def experts_read(self, batch: int) -> float:
        # Expected experts a step reads per layer: each token picks top_k of E, uniformly at random.
        num, top_k = self.experts
        return num * (1 - (1 - top_k / num) ** batch) if num else 0.0

    def decode_step(self, contexts: list[int]) -> float:
        weights = self.weight_bytes + self.expert_bytes * self.experts_read(len(contexts))
        byte_s = (weights + self.kv_bytes_per_token * sum(contexts)) / self.card.copy_bytes_per_s
        flop_s = len(contexts) * 2 * self.matmul_params / self.card.gemm_flops
        return max(byte_s, flop_s)

    def prefill(self, num_tokens: int, ctx_pairs: int) -> float:
        flops = 2 * self.matmul_params * num_tokens + self.attn_flops_per_ctx * ctx_pairs
        weights = self.weight_bytes + self.expert_bytes * self.experts[0]
        return max(flops / self.card.gemm_flops, weights / self.card.copy_bytes_per_s)


def floor_for(cfg: dict[str, Any], card: Card) -> Floor:
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    d, nh, nkv, vocab = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    experts, top_k = cfg.get("num_local_experts", 0), cfg.get("num_experts_per_tok", 0)
    attn = h * (nh + 2 * nkv) * d + nh * d * h + 2 * h
    mlp = 3 * h * inter  # one expert's, for a mixture of experts
    shared = layers * (attn + (h * experts if experts else mlp)) + vocab * h  # the router; the LM head reads all
    return Floor(
        weight_bytes=2 * (shared + h),
        matmul_params=shared + layers * mlp * (top_k if experts else 0),
        kv_bytes_per_token=2 * layers * nkv * d * 2,
        attn_flops_per_ctx=4 * nh * d * layers,
        card=card,
        expert_bytes=2 * layers * mlp if experts else 0,
        experts=(experts, top_k),
    )


def roofline_static(floor: Floor, batch: int, prompt: int, new: int) -> float:
    seconds = floor.prefill(batch * prompt, batch * prompt * (prompt + 1) // 2)
    seconds += sum(floor.decode_step([prompt + i] * batch) for i in range(new - 1))
    return batch * new / seconds


def roofline_flood(floor: Floor, num: int, prompt: int, new: int, capacity_tokens: int) -> float:
    # Every prompt is computed once at GEMM rate; decode runs in waves of as many sequences as
    # the KV pool holds at full length.
    seconds = floor.prefill(num * prompt, num * prompt * (prompt + 1) // 2) * 1.0
    concurrent = max(1, min(num, capacity_tokens // (prompt + new)))
    waves = -(-num // concurrent)
    for w in range(waves):
        size = min(concurrent, num - w * concurrent)
        seconds += sum(floor.decode_step([prompt + i] * size) for i in range(new - 1))
    return num * new / seconds

