"""PEFT's LoRA checkpoint format, read into plain per-module (A, B) pairs, and `--lora-adapters`.

A PEFT adapter directory holds `adapter_config.json` (peft_type LORA, r, lora_alpha,
target_modules, use_rslora, fan_in_fan_out, ...) and `adapter_model.safetensors`, whose tensors
are named `base_model.model.<module path>.lora_A.weight` (r, in) and `...lora_B.weight` (out, r),
the module path being the base model's own (`model.layers.3.self_attn.q_proj`). A projection's
update is scaling * B @ A with scaling = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA.
What this worker cannot serve exactly (DoRA, biases, modules saved whole, targets other than the
decoder's linears) is refused at load with the reason, never served approximately.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.model_source import ModelNotFound, read_json_object, resolve_model

if TYPE_CHECKING:
    import torch

__all__ = ["AdapterError", "AdapterSpec", "PeftAdapter", "TARGETS", "parse_adapter_specs", "read_peft_adapter"]

log = logging.getLogger("genfleet.worker.lora")

# The decoder linears an adapter may target (HF names), each with the fused module of ours that
# holds it and its part there (worker/models/causal_lm.py's stacked_params).
TARGETS: dict[str, tuple[str, int]] = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2), "o_proj": ("o_proj", 0),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1), "down_proj": ("down_proj", 0),
}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_TENSOR = re.compile(r"^base_model\.model\.(?:model\.)?layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.\w+)?\.weight$")


class AdapterError(ValueError):
    """An adapter that cannot be served here: its files, its format, or its fit to the model."""


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    adapter_id: str  # what requests name it by
    source: str  # a local directory or a hub id
    revision: str | None = None


@dataclass(slots=True)
class PeftAdapter:
    adapter_id: str
    rank: int
    scaling: float  # lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA
    # (layer, HF projection name) -> (A (r, in), B (out, r)), float32 on the host
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]


def parse_adapter_specs(value: str | None) -> list[AdapterSpec]:
    """TGI's `--lora-adapters id[@rev],name=/local/path,...`: a bare entry is a hub id (its id is the
    hub id, as TGI's) or a local directory (its id is the directory's name)."""
    specs: list[AdapterSpec] = []
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, source = item.partition("=")
        if not sep:
            source, _, rev = item.partition("@")
            local = Path(source).expanduser()
            name = local.name if local.is_dir() else source
            specs.append(AdapterSpec(check_adapter_id(name), source, rev or None))
        else:
            specs.append(AdapterSpec(check_adapter_id(name.strip()), source.strip()))
    ids = [s.adapter_id for s in specs]
    if len(set(ids)) != len(ids):
        raise AdapterError(f"--lora-adapters names an adapter twice: {ids}")
    return specs


def check_adapter_id(adapter_id: str) -> str:
    if not _ID.match(adapter_id):
        raise AdapterError(f"adapter id {adapter_id!r} must be 1-128 letters, digits, '.', '_', '-' or '/'")
    return adapter_id


def read_peft_adapter(spec: AdapterSpec, model_cache: str | None = None) -> PeftAdapter:
    directory = _directory(spec, model_cache)
    config = read_json_object(directory / "adapter_config.json")
    if not config:
        raise AdapterError(f"{directory} has no adapter_config.json: not a PEFT adapter")
    _check_config(config, directory)
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha", rank))
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterError(f"{directory}: per-module rank_pattern / alpha_pattern are not supported")
    from safetensors import safe_open  # torch: only where weights are read (the worker loop imports this module)

    files = sorted(directory.glob("adapter_model*.safetensors"))
    if not files:
        raise AdapterError(f"{directory} has no adapter_model.safetensors (a .bin checkpoint is not read: "
                           "convert it with safetensors)")
    halves: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                m = _TENSOR.match(name)
                if m is None or m.group(2) not in TARGETS:
                    raise AdapterError(f"{directory}: tensor {name!r} is not a LoRA weight of a decoder linear "
                                       f"({', '.join(TARGETS)})")
                halves.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = f.get_tensor(name).float()
    weights = {}
    for key, pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{directory}: layer {key[0]} {key[1]} has lora_{''.join(pair)} only")
        a, b = pair["A"], pair["B"]
        if a.shape[0] != rank or b.shape[1] != rank:
            raise AdapterError(f"{directory}: layer {key[0]} {key[1]} has rank {a.shape[0]}x{b.shape[1]}, config r={rank}")
        weights[key] = (a, b)
    if not weights:
        raise AdapterError(f"{directory}: the checkpoint holds no LoRA weights")
    return PeftAdapter(spec.adapter_id, rank, scaling, weights)


def _directory(spec: AdapterSpec, model_cache: str | None) -> Path:
    local = Path(spec.source).expanduser()
    if local.is_dir():
        return local
    if local.is_absolute() or spec.source.startswith("."):
        raise AdapterError(f"adapter {spec.adapter_id}: no directory {spec.source}")
    try:  # a hub id: the shared cache, or a download where the Hub is reachable
        return resolve_model(spec.source, model_cache=model_cache, revision=spec.revision)
    except ModelNotFound as exc:
        raise AdapterError(f"adapter {spec.adapter_id}: {exc}") from exc


def _check_config(config: dict[str, object], directory: Path) -> None:
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"{directory}: peft_type {config.get('peft_type')!r} is not LORA")
    r = config.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise AdapterError(f"{directory}: adapter_config.json needs an integer r >= 1, got {r!r}")
    if config.get("use_dora"):
        raise AdapterError(f"{directory}: DoRA adapters (use_dora) are not supported")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{directory}: bias={config.get('bias')!r} is not supported (only 'none')")
    if config.get("modules_to_save"):
        raise AdapterError(f"{directory}: modules_to_save {config['modules_to_save']} are not supported")
    targets = config.get("target_modules")
    names = [targets] if isinstance(targets, str) else list(targets or [])  # type: ignore[call-overload]
    unknown = [t for t in names if t.rsplit(".", 1)[-1] not in TARGETS and not isinstance(targets, str)]
    if unknown:
        raise AdapterError(f"{directory}: target_modules {unknown} are not decoder linears ({', '.join(TARGETS)})")
    if config.get("fan_in_fan_out"):
        # PEFT itself turns it off for nn.Linear bases (every target here): the weights are the usual (out, in).
        log.warning("%s: fan_in_fan_out is set, but its targets are Linear layers: read as PEFT does (off)", directory)
