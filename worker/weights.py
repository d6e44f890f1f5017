"""safetensors -> our modules: HF names mapped onto fused qkv_proj / gate_up_proj, mmap'd shards.

With a quantization method, each decoder linear's checkpoint tensors (its `tensor_names`) are
gathered per source module in shard order and handed to the method, whose module replaces the
dense linear once the rest of the model is on its device and dtype. A mixture-of-experts
model's experts go the same way, per stacked projection (w13, w2): a checkpoint format's
per-expert tensors are gathered and handed to the method whole; an on-the-fly method quantizes
each stack once it is loaded, freeing the dense one before the next.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from common.model_source import MEDUSA_FILE
from worker.models import CausalLM
from worker.parallel.plan import ShardPlan
from worker.quant import QuantizationError, QuantMethod, quantizable_linears, replace_module
from worker.quant.experts import QuantExperts, quantize_experts

__all__ = ["load_weights"]


def load_weights(model: CausalLM, model_dir: Path, dtype: torch.dtype, device: torch.device,
                 method: QuantMethod | None = None, plan: ShardPlan | None = None) -> None:
    """`plan`: a sharded worker's rank reads only its slices of each tensor (its model is built at that size)."""
    read = plan.read if plan is not None else _read_whole
    files = sorted(p for p in model_dir.glob("*.safetensors") if p.name != MEDUSA_FILE)  # heads: speculative/
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    params = dict(model.named_parameters())
    cfg = model.cfg
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shard_offsets = {
        "qkv_proj": [(0, q), (q, kv), (q + kv, kv)],
        "gate_up_proj": [(0, cfg.intermediate_size), (cfg.intermediate_size, cfg.intermediate_size)],
    }
    experts = _Experts(params)
    # Quantized experts: stacked parameter -> expert -> shard -> its tensors by suffix.
    expert_parts: dict[str, dict[int, dict[int, dict[str, torch.Tensor]]]] = {}
    loads_quantized_experts = method is not None and method.quantizes_experts and not method.on_the_fly
    linears = quantizable_linears(model) if method is not None else {}
    # module path -> {shard: its quantized tensors by suffix}, and how many shards it fuses
    gathered: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    num_shards: dict[str, int] = {}
    loaded: set[str] = set()
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for hf_name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                if "rotary_emb.inv_freq" in hf_name or model.ignores(hf_name):
                    continue
                slot = model.expert_slot(hf_name)
                if slot is not None:
                    suffix = hf_name.rpartition(".")[2]
                    if loads_quantized_experts and suffix in method.tensor_names:  # type: ignore[union-attr]
                        by_shard = expert_parts.setdefault(slot[0], {}).setdefault(slot[1], {})
                        by_shard.setdefault(slot[2], {})[suffix] = f.get_tensor(hf_name)
                        continue
                    if suffix != "weight":
                        raise KeyError(f"checkpoint tensor {hf_name!r} has no place in {type(model).__name__}'s dense experts")
                    if loads_quantized_experts:
                        raise QuantizationError(f"{hf_name}: a dense expert in a checkpoint quantized with "
                                                f"{method.name}; experts dense and quantized at once do not load")  # type: ignore[union-attr]
                    tensor = plan.read_expert(f, hf_name, slot) if plan is not None else f.get_tensor(hf_name)
                    experts.load(slot, tensor, hf_name)
                    continue
                name, shard = model.hf_to_param(hf_name)
                if name == "lm_head.weight" and model.lm_head is None:
                    continue  # tied: the embedding serves as the head
                module, _, suffix = name.rpartition(".")
                if method is not None and module in linears and suffix in method.tensor_names:
                    # A family whose checkpoints store qkv_proj / gate_up_proj fused has one shard.
                    num_shards[module] = 1 if shard is None else len(shard_offsets[module.rsplit(".", 1)[-1]])
                    gathered.setdefault(module, {}).setdefault(shard or 0, {})[suffix] = read(f, hf_name, name, shard)
                    continue
                param = params.get(name)
                if param is None:
                    raise KeyError(f"checkpoint tensor {hf_name!r} has no place in {type(model).__name__}")
                _copy_shard(param, name, shard, read(f, hf_name, name, shard), shard_offsets)
                loaded.add(name)
    loaded |= {f"{module}.weight" for module in gathered}  # replaced below
    loaded |= experts.complete() | set(expert_parts)
    missing = set(params) - loaded
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
    params.clear()  # a dense stack replaced below is freed as soon as it is
    # The stacks quantized experts replace: shapes only (the meta device), which `to` cannot move.
    stacks = {name: _detach(model, name) for name in expert_parts}
    model.to(device=device, dtype=dtype)
    model.cos_sin_cache.data = model.cos_sin_cache.float()  # rotary tables stay float32
    if method is not None and method.on_the_fly and method.quantizes_experts:
        quantize_experts(model, method, dtype)
    for name, by_expert in expert_parts.items():
        parent, _, child = name.rpartition(".")
        built = _quantized_experts(name, stacks[name], by_expert, method, dtype, device)  # type: ignore[arg-type]
        setattr(model.get_submodule(parent), child, built)
    for module, by_shard in gathered.items():
        if sorted(by_shard) != list(range(num_shards[module])):
            raise QuantizationError(f"checkpoint lacks a shard of {module} ({num_shards[module]} expected)")
        shards = [by_shard[i] for i in range(num_shards[module])]
        dense = linears[module]
        try:
            built = method.build(shards, dense.bias, dtype, device)  # type: ignore[union-attr]
        except (KeyError, ValueError) as exc:
            raise QuantizationError(f"{module}: {exc!s}") from exc
        if (built.in_features, built.out_features) != (dense.in_features, dense.out_features):
            raise QuantizationError(
                f"{module}: the checkpoint's quantized weight is {built.in_features}x{built.out_features}, "
                f"the model expects {dense.in_features}x{dense.out_features}"
            )
        replace_module(model, module, built)


def _detach(model: CausalLM, name: str) -> tuple[int, ...]:  # a parameter taken out of the model: its shape
    parent, _, child = name.rpartition(".")
    shape = tuple(model.get_parameter(name).shape)
    delattr(model.get_submodule(parent), child)
    return shape


def _quantized_experts(name: str, shape: tuple[int, ...], by_expert: dict[int, dict[int, dict[str, torch.Tensor]]],
                       method: QuantMethod, dtype: torch.dtype, device: torch.device) -> QuantExperts:
    num_experts, shards = shape[0], 2 if name.endswith(".w13") else 1  # shape (E, N, K)
    for e in range(num_experts):
        if sorted(by_expert.get(e, {})) != list(range(shards)):
            raise QuantizationError(f"checkpoint lacks a projection of expert {e} of {name.rsplit('.', 1)[0]}")
    pieces = [[by_expert[e][i] for i in range(shards)] for e in range(num_experts)]
    try:
        built = method.experts_from_checkpoint(pieces, dtype, device)
    except (KeyError, ValueError) as exc:
        raise QuantizationError(f"{name}: {exc!s}") from exc
    got = (built.num_experts, built.out_features, built.in_features)
    if got != shape:
        raise QuantizationError(f"{name}: the checkpoint's quantized experts are {got}, the model expects {shape}")
    return built


def _copy_shard(param: torch.nn.Parameter, name: str, shard: int | None, tensor: torch.Tensor,
                shard_offsets: dict[str, list[tuple[int, int]]]) -> None:
    with torch.no_grad():
        if shard is None:
            param.copy_(tensor)
            return
        fused = name.split(".")[-2]
        start, size = shard_offsets[fused][shard]
        if fused == "gate_up_proj":  # halves of the parameter: a shared expert's MLP has its own width
            size = param.shape[0] // 2
            start = shard * size
        param[start : start + size].copy_(tensor)


class _Experts:
    """Stacked expert parameters (w13, w2), filled one (expert, shard) piece at a time."""

    def __init__(self, params: dict[str, torch.nn.Parameter]) -> None:
        self.params = params
        self.pieces: dict[str, set[tuple[int, int]]] = {}  # parameter -> pieces loaded
        self.needs: dict[str, int] = {}  # parameter -> pieces it takes (experts x shards)

    def load(self, slot: tuple[str, int, int, int], tensor: torch.Tensor, hf_name: str) -> None:
        name, expert, shard, shards = slot
        param = self.params.get(name)
        if param is None:
            raise KeyError(f"checkpoint tensor {hf_name!r} has no place in the model")
        rows = param.shape[1] // shards  # w13 stacks gate then up rows: shard i is the i-th block
        target = param[expert, shard * rows : (shard + 1) * rows]
        if target.shape != tensor.shape:
            raise KeyError(f"checkpoint tensor {hf_name!r} is {tuple(tensor.shape)}, expected {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(tensor)
        self.pieces.setdefault(name, set()).add((expert, shard))
        self.needs[name] = param.shape[0] * shards

    def complete(self) -> set[str]:
        return {name for name, pieces in self.pieces.items() if len(pieces) == self.needs[name]}


def _read_whole(f: Any, hf_name: str, _name: str, _shard: int | None) -> torch.Tensor:
    return f.get_tensor(hf_name)  # type: ignore[no-any-return]
