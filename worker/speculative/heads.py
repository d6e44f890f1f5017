"""Speculator heads: where a model's are, which kind they are, and how many drafts they propose.

TGI picks the method from the checkpoint: Medusa heads when a config.json has
`medusa_num_heads`, IBM's MLP speculator when it is `MLPSpeculatorPreTrainedModel`
(`model_type: mlp_speculator`), n-gram prompt lookup otherwise; beyond TGI, an EAGLE-3 draft
model (`LlamaForCausalLMEagle3`, eagle3.py). The heads are found, in order:
- `--speculative-model DIR` (or a Hub id): a directory of any of these kinds;
- `--model-id DIR` naming the heads' directory, whose `base_model_name_or_path` is the model
  (TGI's way; common/model_source.py resolves the model from it);
- `medusa_lm_head.safetensors` beside the model's own weights.

`--speculate N` takes the first N heads (default: all of them); more than the heads hold is an
error, as in TGI (an EAGLE-3 draft chains any N, default eagle3_load.DEFAULT_DRAFTS). Each kind
registers a loader in `_LOADERS` (medusa.py, mlp_speculator.py, eagle3_load.py). Heads run on the
device once per step, on the hidden state of each request's last kept token
(worker/model_runner.py); their drafts are verified the next step like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from safetensors import safe_open

from common.config import WorkerConfig
from common.model_source import MEDUSA_FILE, ModelNotFound, read_json_object, resolve_model, speculator_dir, speculator_kind

if TYPE_CHECKING:
    from worker.models import CausalLM, ModelConfig

__all__ = [
    "DraftSource", "Speculator", "SpeculatorError", "HeadTensors", "find_speculator", "load_speculator", "register", "speculator_for",
]

log = logging.getLogger("genfleet.worker.speculation")


class SpeculatorError(ValueError):
    """Speculator heads that cannot be served: the message says which file and why."""


class DraftSource(Protocol):
    """What drafts for the model: the engine's Drafter reads these two; the runner runs it."""

    method: str  # /info's `speculation`: "medusa", "mlp_speculator" or "eagle3"
    num_heads: int  # drafts proposed per request and step: the resolved --speculate


class Speculator(DraftSource, Protocol):
    """Heads that propose drafts from the target model's last hidden state (a seam: medusa.py,
    mlp_speculator.py). An EAGLE-3 draft model (eagle3.py) drafts from more than that: the
    runner drives it itself."""

    def propose(self, hidden: torch.Tensor, token_ids: torch.Tensor, model: CausalLM) -> torch.Tensor:
        """Greedy drafts to follow each row's sampled token.

        Args:
            hidden: (P, hidden) the model's final hidden state (after its norm) of each row.
            token_ids: (P,) int64, the token each row sampled.
            model: the target model (its LM head and embeddings, where the heads share them).
        Returns:
            (P, num_heads) int64 drafts, the first following token_ids.
        """
        ...


_Count = Callable[[dict[str, Any], Path], int]
_Load = Callable[[Path, dict[str, Any], "ModelConfig", int, torch.dtype, torch.device], DraftSource]


@dataclass(frozen=True, slots=True)
class _Loader:
    num_heads: _Count  # the most drafts a checkpoint proposes: (its config.json, its directory) -> count
    load: _Load  # (directory, config.json, target config, drafts, dtype, device) -> the heads
    default_heads: _Count | None = None  # the drafts without --speculate (None: num_heads, all of them)


_LOADERS: dict[str, _Loader] = {}


def register(kind: str, num_heads: _Count, load: _Load, default_heads: _Count | None = None) -> None:
    _LOADERS[kind] = _Loader(num_heads, load, default_heads)


def find_speculator(config: WorkerConfig, model_dir: Path) -> Path | None:
    """The directory of the heads that serve `model_dir`, or None (n-gram, or no speculation)."""
    fleet = config.fleet
    try:
        if config.speculative_model:
            found = resolve_heads(config.speculative_model, fleet.model_cache)
            if speculator_kind(read_json_object(found / "config.json")) is None and not (found / MEDUSA_FILE).is_file():
                raise SpeculatorError(
                    f"--speculative-model {config.speculative_model}: {found} holds neither Medusa heads "
                    f"({MEDUSA_FILE}, `medusa_num_heads` in config.json), an MLP speculator "
                    f"(config.json `model_type: mlp_speculator`) nor an EAGLE-3 draft "
                    f"(config.json `architectures: [\"LlamaForCausalLMEagle3\"]`)"
                )
            return found
    except ModelNotFound as exc:
        raise SpeculatorError(str(exc)) from None
    try:
        named = speculator_dir(fleet.model_id, model_cache=fleet.model_cache, revision=fleet.revision)
    except ModelNotFound:
        # A worker has resolved its --model-id into `model_dir` already; one that cannot be found
        # here (a runner built apart from a worker, on another model directory) names no heads.
        named = None
    if named is not None:
        return named
    return model_dir if (model_dir / MEDUSA_FILE).is_file() else None


def resolve_heads(name: str, model_cache: str | None) -> Path:
    """A speculator directory by path or Hub id, not followed to its base model."""
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if local.exists() or local.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        raise SpeculatorError(f"--speculative-model {name}: not a directory (nor a Hub id)")
    return speculator_dir(name, model_cache=model_cache) or resolve_model(name, model_cache=model_cache)


def load_speculator(directory: Path, target: ModelConfig, speculate: int | None, dtype: torch.dtype,
                    device: torch.device) -> DraftSource | None:
    """The heads in `directory` for the target model, `speculate` of them (None: all); None for 0."""
    import worker.speculative.eagle3_load  # noqa: F401  (each kind registers its loader)
    import worker.speculative.medusa  # noqa: F401
    import worker.speculative.mlp_speculator  # noqa: F401

    raw = read_json_object(directory / "config.json")
    kind = speculator_kind(raw) or "medusa"  # heads beside a model's weights: Medusa's file
    loader = _LOADERS[kind]
    available = loader.num_heads(raw, directory)
    wanted = (loader.default_heads or loader.num_heads)(raw, directory) if speculate is None else speculate
    if wanted > available:
        raise SpeculatorError(
            f"Speculate is set to `{wanted}` but the {kind} model in {directory} only has `{available}` heads, "
            f"please make them match (--speculate {available} or fewer)"
        )
    if wanted == 0:
        return None
    return loader.load(directory, raw, target, wanted, dtype, device)


class HeadTensors:
    """Every tensor of a speculator's safetensors files, by name (a leading `speculator.` dropped,
    as vLLM reads IBM's checkpoints), checked for shape as they are taken."""

    def __init__(self, files: list[Path], kind: str) -> None:
        if not files:
            raise SpeculatorError(f"{kind} heads: no weights file found")
        self.kind = kind
        self.where = ", ".join(str(f) for f in files)
        self.tensors: dict[str, torch.Tensor] = {}
        for path in files:
            try:
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                        self.tensors[name.removeprefix("speculator.")] = f.get_tensor(name)
            except Exception as exc:  # safetensors raises its own error types for a bad header or body
                raise SpeculatorError(f"{kind} heads: {path} is not a readable safetensors file ({exc})") from None

    def has(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        tensor = self.tensors.get(name)
        if tensor is None:
            raise SpeculatorError(f"{self.kind} heads: tensor {name!r} is missing from {self.where}")
        if tuple(tensor.shape) != shape:
            raise SpeculatorError(
                f"{self.kind} heads: tensor {name!r} in {self.where} has shape {tuple(tensor.shape)}, "
                f"the model needs {shape}"
            )
        if not tensor.is_floating_point():
            raise SpeculatorError(f"{self.kind} heads: tensor {name!r} is {tensor.dtype}, not floating point")
        return tensor.to(device=device, dtype=dtype)


def speculator_for(config: WorkerConfig, model_dir: Path, target: ModelConfig, dtype: torch.dtype,
                   device: torch.device, sharded: bool) -> DraftSource | None:
    """The heads that serve `model_dir` under `config`, loaded; None for n-gram or no speculation."""
    if config.speculate == 0:
        return None
    directory = find_speculator(config, model_dir)
    if directory is None:
        return None
    if sharded:
        raise SpeculatorError(
            f"speculator heads ({directory}) are not served with --num-shard > 1 yet: serve them on one device, "
            f"or drop the heads for n-gram drafting (--speculate N with the plain model)"
        )
    heads = load_speculator(directory, target, config.speculate, dtype, device)
    if heads is not None:
        log.info("speculation: %s, %d heads from %s", heads.method, heads.num_heads, directory)
    return heads
