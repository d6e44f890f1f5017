"""The adapters one worker serves: a slot each, their weights stacked in every linear they target.

The first load wraps the decoder's qkv_proj, o_proj, gate_up_proj and down_proj in `LoraLinear`
(worker/lora/layer.py); before it, the model runs exactly as without adapters. Each load or
unload restacks the weights of every wrapped linear: slot i holds the i-th adapter, its rank
padded to the largest rank loaded, its fused parts' A rows stacked and its B block-diagonal,
scaling folded into B. A linear that an adapter does not target gets zeros in its slot.

Owned by the engine thread (loads happen between steps); `ids` is a snapshot other threads read.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from worker.batch import ScheduledBatch
from worker.input_builder import upload
from worker.lora.layer import LoraBatch, LoraLinear
from worker.lora.peft import TARGETS, AdapterError, AdapterSpec, PeftAdapter, read_peft_adapter

__all__ = ["AdapterTable"]

log = logging.getLogger("genfleet.worker.lora")

_WRAPPED = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


class AdapterTable:
    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device, max_loras: int,
                 model_cache: str | None = None) -> None:
        self.model = model
        self.dtype = dtype  # the activations' (a quantized linear's packed weights say nothing of it)
        self.device = device
        self.max_loras = max_loras
        self.model_cache = model_cache
        self._adapters: list[PeftAdapter] = []  # slot i = self._adapters[i]
        self._linears: dict[tuple[int, str], LoraLinear] = {}  # (layer, our module name) -> wrapper
        self.ids: tuple[str, ...] = ()  # the served ids in slot order; replaced whole on each change

    def __contains__(self, adapter_id: str) -> bool:
        return adapter_id in self.ids

    def load(self, spec: AdapterSpec) -> None:
        """Read and install an adapter; loading an id again replaces its weights. Raises AdapterError."""
        started = time.monotonic()
        others = [a for a in self._adapters if a.adapter_id != spec.adapter_id]
        if len(others) >= self.max_loras:
            raise AdapterError(f"this worker already holds --max-loras {self.max_loras} adapters: unload one first")
        adapter = read_peft_adapter(spec, self.model_cache)
        if not self._linears:
            self._wrap()
        self._check_fit(adapter)
        self._install([*others, adapter])
        log.info("LoRA adapter %s loaded from %s (r=%d, scaling %.3g, %d projections) in %.2fs", spec.adapter_id,
                 spec.source, adapter.rank, adapter.scaling, len(adapter.weights), time.monotonic() - started)

    def unload(self, adapter_id: str) -> None:
        self._install([a for a in self._adapters if a.adapter_id != adapter_id])
        log.info("LoRA adapter %s unloaded", adapter_id)

    def batch(self, batch: ScheduledBatch) -> LoraBatch | None:
        """The step's segments (consecutive rows of one adapter), or None when no row has an adapter."""
        if not self.ids or not any(r.adapter_id for r in batch.requests):
            return None
        slot_of = {a: i for i, a in enumerate(self.ids)}
        starts, slots = [0], []
        for req in batch.requests:
            slot = slot_of[req.adapter_id] if req.adapter_id else -1  # the worker admits served ids only
            n = len(req.token_ids)
            if slots and slots[-1] == slot:
                starts[-1] += n
            else:
                slots.append(slot)
                starts.append(starts[-1] + n)
        longest = max(b - a for a, b in zip(starts, starts[1:]))
        both = upload(torch.tensor(starts + slots, dtype=torch.int32), self.device)
        return LoraBatch(both[: len(starts)], both[len(starts) :], longest)

    # -- internals -------------------------------------------------------------------------------
    def _wrap(self) -> None:
        layers = getattr(self.model, "layers", None)
        for i, layer in enumerate(layers or ()):
            for path in _WRAPPED:
                parent_name, _, name = path.rpartition(".")
                parent = getattr(layer, parent_name)
                base = getattr(parent, name, None)
                if base is None:
                    continue  # a mixture-of-experts MLP has no gate_up_proj / down_proj to adapt
                wrapper = LoraLinear(base, _part_sizes(parent, name, base))
                setattr(parent, name, wrapper)
                self._linears[(i, name)] = wrapper

    def _check_fit(self, adapter: PeftAdapter) -> None:
        for (layer, hf_name), (a, b) in adapter.weights.items():
            ours, part = TARGETS[hf_name]
            wrapper = self._linears.get((layer, ours))
            if wrapper is None:
                raise AdapterError(f"adapter {adapter.adapter_id} targets layer {layer} {hf_name}, which this "
                                   "model does not have (or has as experts)")
            want = (wrapper.in_features, wrapper.part_sizes[part])
            if (a.shape[1], b.shape[0]) != want:
                raise AdapterError(f"adapter {adapter.adapter_id}: layer {layer} {hf_name} is "
                                   f"{a.shape[1]}->{b.shape[0]}, the model's is {want[0]}->{want[1]}: another base model?")

    def _install(self, adapters: list[PeftAdapter]) -> None:
        rank = max((a.rank for a in adapters), default=0)
        for (layer, ours), wrapper in self._linears.items():
            parts = len(wrapper.part_sizes)
            mine = {hf: part for hf, (o, part) in TARGETS.items() if o == ours}
            if not any((layer, hf) in a.weights for a in adapters for hf in mine):
                wrapper.lora_a = wrapper.lora_b = None
                continue
            lora_a = torch.zeros(len(adapters), parts * rank, wrapper.in_features)  # (L, parts*R, in)
            lora_b = torch.zeros(len(adapters), wrapper.out_features, parts * rank)  # (L, out, parts*R)
            offsets = [sum(wrapper.part_sizes[:p]) for p in range(parts)]
            for slot, adapter in enumerate(adapters):
                for hf, part in mine.items():
                    pair = adapter.weights.get((layer, hf))
                    if pair is None:
                        continue
                    a, b = pair
                    cols = slice(part * rank, part * rank + adapter.rank)
                    lora_a[slot, cols] = a
                    lora_b[slot, offsets[part] : offsets[part] + b.shape[0], cols] = b * adapter.scaling
            wrapper.lora_a = lora_a.to(self.device, self.dtype)
            wrapper.lora_b = lora_b.to(self.device, self.dtype)
        self._adapters = adapters
        self.ids = tuple(a.adapter_id for a in adapters)


def _part_sizes(parent: nn.Module, name: str, base: nn.Module) -> tuple[int, ...]:
    out = int(base.out_features)  # type: ignore[arg-type]
    if name == "qkv_proj":
        q, kv = int(parent.q_size), int(parent.kv_size)  # type: ignore[arg-type]
        return (q, kv, kv)
    if name == "gate_up_proj":
        return (out // 2, out // 2)
    return (out,)

