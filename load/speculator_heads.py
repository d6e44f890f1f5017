"""Speculator head checkpoints in TGI's layouts for a given target model, written by the tests and
by the benchmarks (load/bench_speculative.py --speculator, load/bench_gpu.py --speculator).

- random heads: what an untrained checkpoint looks like (acceptance near zero);
- "successor" heads: built from a table `follow` (token -> the token the target greedily wrote
  after it in a plain run), so that their drafts are often right on the repetitive text a small
  model writes and acceptance is well above zero. For Medusa (own projections), head i's
  projection row `follow^(i+1)(u)` is the target's output row of u: the head picks the successor
  of the token the row's hidden state sampled. For the MLP speculator, the projections are zero
  and each step's state is a one-hot of the previous token, so head i maps it through `follow`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = ["write_medusa", "write_mlp_speculator", "write_random_heads", "successors"]


def successors(outputs: dict[str, list[int]], vocab: int) -> list[int]:
    """Per token, the token that most often followed it in `outputs` (itself where it never appears)."""
    counts = torch.zeros(vocab, vocab)
    for ids in outputs.values():
        for a, b in zip(ids, ids[1:], strict=False):
            counts[a, b] += 1
    follow = counts.argmax(dim=1)
    seen = counts.sum(dim=1) > 0
    return torch.where(seen, follow, torch.arange(vocab)).tolist()


def write_medusa(directory: Path, hidden: int, vocab: int, *, heads: int, layers: int = 1, own_projection: bool,
                 output_rows: torch.Tensor | None = None, follow: list[int] | None = None,
                 base: str | None = None, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Medusa heads; `output_rows` (V, H) with `follow`: successor heads, else random ones."""
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(heads):
        for j in range(layers):
            scale = 0.0 if follow is not None else 0.05  # zero blocks: the head reads the hidden state as is
            tensors[f"{i}.{j}.linear.weight"] = torch.randn(hidden, hidden, generator=gen) * scale
            tensors[f"{i}.{j}.linear.bias"] = torch.randn(hidden, generator=gen) * scale
        if own_projection:
            if follow is not None and output_rows is not None:
                proj = torch.zeros(vocab, hidden)
                ahead = list(range(vocab))
                for _ in range(i + 1):
                    ahead = [follow[t] for t in ahead]
                for u in range(vocab):
                    proj[ahead[u]] = output_rows[u]  # a later u overwrites: the table need not be one-to-one
                tensors[f"{i}.{layers}.weight"] = proj
            else:
                tensors[f"{i}.{layers}.weight"] = torch.randn(vocab, hidden, generator=gen) * 0.05
    save_file({k: v.to(dtype) for k, v in tensors.items()}, str(directory / "medusa_lm_head.safetensors"))
    config: dict[str, object] = {"medusa_num_heads": heads, "medusa_num_layers": layers}
    if base is not None:
        config["base_model_name_or_path"] = base
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def write_mlp_speculator(directory: Path, hidden: int, vocab: int, *, n_predict: int, inner: int,
                         tie_weights: bool = False, scale_input: bool = False, follow: list[int] | None = None,
                         base: str | None = None, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """IBM's MLP speculator; with `follow` (needs inner >= vocab) successor heads, else random ones."""
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    count = 1 if tie_weights else n_predict
    for i in range(count):
        if follow is not None:
            assert inner >= vocab
            tensors[f"emb.{i}.weight"] = torch.eye(vocab, inner) * 10.0
            head = torch.zeros(vocab, inner)
            head[follow, torch.arange(vocab)] = 1.0
            tensors[f"head.{i}.weight"] = head
            tensors[f"ln.{i}.weight"] = torch.ones(inner)
            tensors[f"ln.{i}.bias"] = torch.zeros(inner)
        else:
            tensors[f"emb.{i}.weight"] = torch.randn(vocab, inner, generator=gen)
            tensors[f"head.{i}.weight"] = torch.randn(vocab, inner, generator=gen) * 0.1
            tensors[f"ln.{i}.weight"] = 1 + 0.1 * torch.randn(inner, generator=gen)
            tensors[f"ln.{i}.bias"] = 0.1 * torch.randn(inner, generator=gen)
    for i in range(min(n_predict, 2) if tie_weights else n_predict):
        scale = 0.0 if follow is not None else 0.1
        tensors[f"proj.{i}.weight"] = torch.randn(inner, hidden if i == 0 else inner, generator=gen) * scale
    save_file({f"speculator.{k}": v.to(dtype) for k, v in tensors.items()}, str(directory / "model.safetensors"))
    config: dict[str, object] = {
        "architectures": ["MLPSpeculatorPreTrainedModel"], "model_type": "mlp_speculator", "n_predict": n_predict,
        "emb_dim": hidden, "inner_dim": inner, "vocab_size": vocab, "tie_weights": tie_weights,
        "scale_input": scale_input, "top_k_tokens_per_head": [1] * n_predict, "n_candidates": 1,
    }
    if base is not None:
        config["base_model_name_or_path"] = base
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def write_random_heads(directory: Path, kind: str, hidden: int, vocab: int, heads: int,
                       dtype: torch.dtype = torch.float32) -> Path:
    """Untrained heads of a target's shape, for benchmarks: Medusa sharing the LM head (one
    residual block per head, as TGI's Medusa-2 checkpoints), or an MLP speculator with tied weights
    and inner_dim = hidden (IBM's accelerators' layout)."""
    if kind == "medusa":
        return write_medusa(directory, hidden, vocab, heads=heads, own_projection=False, dtype=dtype)
    if kind == "mlp_speculator":
        return write_mlp_speculator(directory, hidden, vocab, n_predict=max(2, heads), inner=hidden, tie_weights=True,
                                    scale_input=True, dtype=dtype)
    raise ValueError(f"speculator kind {kind!r}: medusa or mlp_speculator")
