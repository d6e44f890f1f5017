"""Quantized linears: `--quantize METHOD`, and pre-quantized checkpoints found by themselves.

How a model gets its method (`select_method`, TGI's rules): with no flag, the checkpoint's
`quantization_config` (checkpoint_config.py) names it; a flag must agree with the checkpoint;
an on-the-fly method (fp8, eetq, bitsandbytes*) quantizes an unquantized checkpoint on load.

What a method is: only the decoder's linears change (qkv_proj, o_proj, gate_up_proj, down_proj;
embeddings, norms and the LM head stay dense). worker/weights.py hands a method, per linear of
our model, the checkpoint tensors of each source module (q, k, v for qkv_proj) and puts the
module it returns in place of the dense nn.Linear. Model files never change per format: a layer
calls its linears as modules (worker/models/layers.py `linear`).

Internal layouts, each with its kernels and a torch reference in genfleet_kernels/:
- integer weight-only (int_weight.py: `IntWeights` -> `IntWeightLinear`, 4 or 8 bits, grouped
  zero points and scales, act order): awq, gptq, marlin, compressed-tensors pack-quantized.
- one-byte weights (w8.py: `W8Linear`, FP8 e4m3 or int8 with a scale per output channel): fp8
  and compressed-tensors float-quantized (fp8.py), eetq and bitsandbytes (int8.py).
- 4-bit codebooks (bnb4.py: `Lut4Linear`, NF4 / FP4 indices with an absmax per 64 weights):
  bitsandbytes-nf4 and bitsandbytes-fp4.
- stacked experts (experts.py: `QuantExperts`, one SparseMoE projection of every expert, FP8 or
  integer, run by the fused MoE kernel): fp8 on the fly, awq, gptq, marlin and
  compressed-tensors checkpoints. A method
  covers experts with `quantizes_experts` and `experts_from_dense` (on the fly) or
  `experts_from_checkpoint`; a MoE model under any other method is refused at start.

Adding a method (say `eetq`):
1. worker/quant/eetq.py: a `QuantMethod` subclass under `@register`, with `name` (TGI's
   `--quantize` name, listed in common/config.py QUANTIZE_METHODS), `tensor_names` (the
   checkpoint suffixes of one linear; `("weight",)` and `on_the_fly = True` for a method that
   quantizes the dense weight on load), `build(shards, bias, dtype, device)` returning the
   module, and for checkpoint formats `claims(quantization_config)` (and `loads(detected)` when
   the flag may load another method's checkpoint, as gptq loads awq in TGI).
2. The module: an `nn.Module` with `in_features`, `out_features` and `forward(x)`,
   (T, in) -> (T, out) in the activations' dtype, on the layout of its kind; its CUDA kernels
   must run inside CUDA graphs (no host syncs, no allocation that depends on values).
   `packed_bytes()` feeds the load log.
3. Import the file in the list at the bottom of this module; `random(out, in, dtype, device)`
   gives load/bench_gpu.py its random-weights rows.
4. tests/worker/quant/: a packer written from the format's specification, and the served greedy
   tokens against transformers on the dequantized float32 weights (tests/worker/quant/harness.py).
"""

from __future__ import annotations

from torch import nn

from worker.quant.checkpoint_config import read_checkpoint_quantization
from worker.quant.registry import METHODS, QuantizationError, QuantMethod, register, select_method

__all__ = [
    "METHODS",
    "QuantMethod",
    "QuantizationError",
    "register",
    "select_method",
    "read_checkpoint_quantization",
    "quantizable_linears",
    "replace_module",
    "weight_bytes",
]


def quantizable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The decoder's dense linears by module path (the LM head is not one of them)."""
    return {name: m for name, m in model.named_modules() if name.startswith("layers.") and type(m) is nn.Linear}


def replace_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put `module` at `path`, in place of a module or of a parameter (an expert stack)."""
    parent, _, child = path.rpartition(".")
    owner = model.get_submodule(parent)
    delattr(owner, child)  # a parameter of that name would refuse a module
    setattr(owner, child, module)


def weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of every weight as held, bytes the quantized linears hold) for the load log."""
    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    packed = sum(m.packed_bytes() for m in model.modules() if hasattr(m, "packed_bytes"))
    return total, packed


# Each method registers itself on import.
from worker.quant import awq, bnb4, compressed_tensors, fp8, gptq, int8, marlin  # noqa: E402,F401
