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

__all__ = ["write_medusa", "write_mlp_speculator", "write_eagle3", "write_random_heads", "successors"]


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


def write_eagle3(directory: Path, target_hidden: int, vocab: int, *, hidden: int | None = None, heads: int = 4,
                 kv_heads: int = 2, intermediate: int | None = None, draft_vocab: int | None = None,
                 aux_layers: list[int] | None = None, own_embedding: bool = False, follow: list[int] | None = None,
                 seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """An EAGLE-3 draft in the published layout (config.json `LlamaForCausalLMEagle3`, midlayer.*,
    fc, norm, lm_head, d2t, t2d): random weights, over a random subset of `draft_vocab` target
    tokens when it is smaller than `vocab`. With `follow` a successor draft: its own embedding is
    a one-hot of each token plus a constant channel, attention looks at the row's own position
    (q = k = the constant channel, scaled), V and O map the token's one-hot to its successor's,
    and the residual is all but zeroed (`norm_before_residual`, tiny hidden_norm), so each draft
    is follow(previous token) and the chain follows the table."""
    if follow is not None:  # a one-hot of every token (and the constant channel) in the values: even head_dim
        kv_heads = heads
        hidden = heads * 2 * -(-(vocab + 1) // (2 * heads))
    hidden = hidden or target_hidden
    intermediate = intermediate or 2 * hidden
    head_dim = hidden // heads
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    q, kv = heads * head_dim, kv_heads * head_dim
    t = {
        "midlayer.self_attn.q_proj.weight": rand(q, 2 * hidden), "midlayer.self_attn.k_proj.weight": rand(kv, 2 * hidden),
        "midlayer.self_attn.v_proj.weight": rand(kv, 2 * hidden), "midlayer.self_attn.o_proj.weight": rand(hidden, q),
        "midlayer.mlp.gate_proj.weight": rand(intermediate, hidden), "midlayer.mlp.up_proj.weight": rand(intermediate, hidden),
        "midlayer.mlp.down_proj.weight": rand(hidden, intermediate),
        "midlayer.input_layernorm.weight": 1 + rand(hidden), "midlayer.hidden_norm.weight": 1 + rand(hidden),
        "midlayer.post_attention_layernorm.weight": 1 + rand(hidden), "norm.weight": 1 + rand(hidden),
        "fc.weight": rand(hidden, 3 * target_hidden), "lm_head.weight": rand(draft_vocab or vocab, hidden, scale=0.5),
    }
    if own_embedding or follow is not None:
        t["embed_tokens.weight"] = rand(vocab, hidden, scale=1.0)
    ids = torch.arange(vocab)
    if draft_vocab is not None and draft_vocab < vocab:
        ids = torch.randperm(vocab, generator=gen)[:draft_vocab].sort().values
        t["d2t"] = ids - torch.arange(draft_vocab)
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[ids] = True
        t["t2d"] = t2d
    if follow is not None:
        _successor_draft(t, hidden, vocab, follow)
        t["lm_head.weight"] = torch.eye(vocab, hidden)[ids]  # draft id j scores target token ids[j]
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v if k in ("d2t", "t2d") else v.to(dtype) for k, v in t.items()}, str(directory / "model.safetensors"))
    config: dict[str, object] = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "num_hidden_layers": 1, "vocab_size": vocab, "draft_vocab_size": draft_vocab or vocab,
        "target_hidden_size": target_hidden, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048,
        "tie_word_embeddings": False, "hidden_act": "silu", "norm_before_residual": follow is not None,
    }
    if aux_layers is not None:  # else the default layers of the target
        config["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": aux_layers}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _successor_draft(t: dict[str, torch.Tensor], hidden: int, vocab: int, follow: list[int]) -> None:
    const = vocab  # the constant channel of every embedding
    embed = torch.zeros(vocab, hidden)
    embed[torch.arange(vocab), torch.arange(vocab)] = 1.0
    embed[:, const] = 1.0
    t["embed_tokens.weight"] = embed
    for name in ("input_layernorm", "post_attention_layernorm"):
        t[f"midlayer.{name}.weight"] = torch.ones(hidden)
    t["midlayer.hidden_norm.weight"] = torch.full((hidden,), 1e-3)  # the state barely reaches the output
    t["norm.weight"] = torch.ones(hidden)
    q, k = torch.zeros(hidden, 2 * hidden), torch.zeros(hidden, 2 * hidden)  # as many KV heads as heads
    q[:, const] = 4.0  # every rotary pair of every head sees the same constant: its own position scores highest
    k[:, const] = 4.0
    v = torch.zeros(hidden, 2 * hidden)
    v[torch.arange(vocab), torch.arange(vocab)] = 1.0  # value channel u: the token's one-hot
    o = torch.zeros(hidden, hidden)
    o[torch.tensor(follow), torch.arange(vocab)] = 10.0  # value channel u -> its successor's channel
    t["midlayer.self_attn.q_proj.weight"], t["midlayer.self_attn.k_proj.weight"] = q, k
    t["midlayer.self_attn.v_proj.weight"], t["midlayer.self_attn.o_proj.weight"] = v, o
    t["midlayer.mlp.down_proj.weight"] = torch.zeros_like(t["midlayer.mlp.down_proj.weight"])


def write_random_heads(directory: Path, kind: str, hidden: int, vocab: int, heads: int,
                       dtype: torch.dtype = torch.float32) -> Path:
    """Untrained heads of a target's shape, for benchmarks: Medusa sharing the LM head (one
    residual block per head, as TGI's Medusa-2 checkpoints), an MLP speculator with tied weights
    and inner_dim = hidden (IBM's accelerators' layout), or an EAGLE-3 draft (`heads` unused: it
    chains any number)."""
    if kind == "medusa":
        return write_medusa(directory, hidden, vocab, heads=heads, own_projection=False, dtype=dtype)
    if kind == "mlp_speculator":
        return write_mlp_speculator(directory, hidden, vocab, n_predict=max(2, heads), inner=hidden, tie_weights=True,
                                    scale_input=True, dtype=dtype)
    if kind == "eagle3":  # heads of 64 dims, GQA 3:1, a 32,000-token draft vocabulary (the published Llama-3 drafts')
        num_heads = max(1, hidden // 64)
        return write_eagle3(directory, hidden, vocab, heads=num_heads, kv_heads=max(1, num_heads // 3),
                            intermediate=3 * hidden, draft_vocab=min(32000, vocab), dtype=dtype)
    raise ValueError(f"speculator kind {kind!r}: medusa, mlp_speculator or eagle3")
