"""The method registry: `--quantize` names -> QuantMethod classes, and which one a model gets."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from common.config import QUANTIZE_METHODS

if TYPE_CHECKING:
    import torch
    from torch import nn

    from worker.quant.experts import QuantExperts

__all__ = ["QuantMethod", "QuantizationError", "METHODS", "register", "select_method"]


class QuantizationError(ValueError):
    """A quantization setting the worker cannot serve; a start-up error, shown without a traceback."""


class QuantMethod(ABC):
    """One `--quantize` method: turns one decoder linear's checkpoint tensors into a module.

    A method either reads pre-quantized tensors (`tensor_names`, e.g. qweight/qzeros/scales) or
    quantizes the dense `weight` on load (`tensor_names == ("weight",)`). The loader gathers, per
    fused linear of our model (qkv_proj = q, k, v; gate_up_proj = gate, up; o_proj; down_proj),
    each source module's tensors in shard order and calls `build` once.
    """

    name: ClassVar[str]  # TGI's --quantize name
    # Checkpoint tensors of one quantized linear, as suffixes after the module's name.
    tensor_names: ClassVar[tuple[str, ...]]
    # False: the method needs a checkpoint quantized in its format (awq, gptq, ...).
    on_the_fly: ClassVar[bool] = False
    # Whether a mixture-of-experts model's experts load under it (worker/quant/experts.py); a
    # method without it is refused at start for such a model.
    quantizes_experts: ClassVar[bool] = False

    def __init__(self, checkpoint: dict[str, Any] | None) -> None:
        # The checkpoint's quantization_config (None: an unquantized checkpoint).
        self.checkpoint = checkpoint

    @classmethod
    def claims(cls, checkpoint: dict[str, Any]) -> bool:
        """Whether a checkpoint's quantization_config is this method's format."""
        return checkpoint.get("quant_method") == cls.name

    @classmethod
    def loads(cls, detected: str) -> bool:
        """Whether `--quantize <this>` may load a checkpoint of the `detected` method."""
        return detected == cls.name

    @abstractmethod
    def build(self, shards: list[dict[str, torch.Tensor]], bias: torch.Tensor | None,
              dtype: torch.dtype, device: torch.device) -> nn.Module:
        """Args:
            shards: per source module (q, k, v / gate, up / one), its tensors by `tensor_names`,
                on the CPU as stored.
            bias: the fused bias already loaded, or None.
            dtype: the activations' dtype.
            device: where the module lives.
        Returns:
            a module mapping (T, in_features) -> (T, sum of the shards' out_features) in `dtype`.
        """

    def experts_from_dense(self, dense: torch.Tensor, dtype: torch.dtype) -> QuantExperts:
        """An on-the-fly method: one SparseMoE stack (E, N, K), on its device, -> a QuantExperts."""
        raise QuantizationError(f"--quantize {self.name} does not quantize experts")

    def experts_from_checkpoint(self, experts: list[list[dict[str, torch.Tensor]]],
                                dtype: torch.dtype, device: torch.device) -> QuantExperts:
        """A checkpoint format: per expert, per shard (gate, up for w13; down for w2), its tensors
        by `tensor_names` on the CPU -> a QuantExperts of (E, sum of the shards' outputs, in)."""
        raise QuantizationError(f"--quantize {self.name} does not load quantized experts")

    def random_experts(self, num_experts: int, out_features: int, in_features: int,
                       dtype: torch.dtype, device: torch.device) -> QuantExperts:
        """A checkpoint format: a stack of random experts in its layout (benchmarks without a checkpoint)."""
        raise QuantizationError(f"--quantize {self.name} has no random-weights mode for experts")

    def describe(self) -> str:
        """One line for the log: the method and its parameters."""
        return self.name

    def random(self, out_features: int, in_features: int, dtype: torch.dtype, device: torch.device) -> nn.Module:
        """A module of this method with random weights (benchmarks without a checkpoint)."""
        raise QuantizationError(f"--quantize {self.name} has no random-weights mode")


METHODS: dict[str, type[QuantMethod]] = {}


def register(cls: type[QuantMethod]) -> type[QuantMethod]:
    assert cls.name in QUANTIZE_METHODS, f"{cls.name!r} is not one of TGI's --quantize names"
    assert cls.name not in METHODS, f"{cls.name!r} registered twice"
    METHODS[cls.name] = cls
    return cls


def select_method(flag: str | None, checkpoint: dict[str, Any] | None, *,
                  random_weights: bool = False) -> QuantMethod | None:
    """The method for `--quantize flag` on a checkpoint whose quantization_config is `checkpoint`.

    No flag: the checkpoint's own method (TGI's launcher default), or None. A flag that contradicts
    the checkpoint, or a method this build lacks, is a QuantizationError naming both. With
    `random_weights` (benchmarks) no checkpoint is read: the flag's method, on random weights.
    """
    if random_weights:
        return None if flag is None else _implemented(flag)(None)
    cls = _implemented(flag) if flag is not None else None
    detected = _detect(checkpoint) if checkpoint is not None else None
    if cls is None:
        return None if detected is None else METHODS[detected](checkpoint)
    if detected is None:
        if not cls.on_the_fly:
            on_load = ", ".join(n for n, c in sorted(METHODS.items()) if c.on_the_fly) or "(none in this build)"
            raise QuantizationError(
                f"--quantize {flag} needs a checkpoint quantized with {flag}, but this model's config.json has "
                f"no quantization_config; quantize it first, or quantize on load with one of: {on_load}"
            )
        return cls(None)
    if not cls.loads(detected):
        raise QuantizationError(
            f"--quantize {flag} contradicts the checkpoint, which is quantized with {detected} "
            f"(config.json quantization_config); pass --quantize {detected} or leave the flag out"
        )
    return cls(checkpoint)


def _implemented(name: str) -> type[QuantMethod]:
    cls = METHODS.get(name)
    if cls is None:
        raise QuantizationError(
            f"--quantize {name} is not implemented in this build; implemented: {', '.join(sorted(METHODS))}"
        )
    return cls


def _detect(checkpoint: dict[str, Any]) -> str:
    claimed = [name for name, cls in METHODS.items() if cls.claims(checkpoint)]
    if len(claimed) == 1:
        return claimed[0]
    described = checkpoint.get("quant_method", "(no quant_method)")
    fmt = checkpoint.get("checkpoint_format") or checkpoint.get("format")
    if fmt:
        described = f"{described} ({fmt})"
    if not claimed:
        raise QuantizationError(
            f"the checkpoint is quantized with {described}, which this build cannot load; "
            f"implemented: {', '.join(sorted(METHODS))}"
        )
    raise AssertionError(f"methods {claimed} all claim {described}")
