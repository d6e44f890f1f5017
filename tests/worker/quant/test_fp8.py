"""FP8 linears: `--quantize fp8` on the fly, and compressed-tensors float-quantized checkpoints
written by the compressed-tensors library itself; served greedy tokens against transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.worker.quant.harness import (
    Checkpoint,
    assert_served_greedy_equals_transformers,
    random_prompts,
    tiny_model,
    on_the_fly,
)
from worker.quant.w8 import W8Linear


def fp8_per_channel(w: torch.Tensor) -> torch.Tensor:
    """The weight `--quantize fp8` serves, from its definition: e4m3 per output channel, scale amax / 448."""
    scale = w.abs().amax(1, keepdim=True) / 448.0
    return (w / scale).to(torch.float8_e4m3fn).float() * scale


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fp8_on_the_fly(tmp_path: Path, family: str) -> None:
    dense = tiny_model(tmp_path, family)
    assert_served_greedy_equals_transformers(on_the_fly(dense, fp8_per_channel), random_prompts(3, 97), quantize="fp8")


def _compressed_tensors_fp8(src: Path, out: Path, strategy: str) -> Path:
    """An FP8 checkpoint as llm-compressor writes it: the library's scheme, its qparams and its compressor."""
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    weights = QuantizationArgs(num_bits=8, type="float", strategy=strategy, symmetric=True, dynamic=False)
    activations = QuantizationArgs(num_bits=8, type="float", strategy="token", symmetric=True, dynamic=True)
    config = QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights, input_activations=activations)},
        ignore=["lm_head"], quantization_status=QuantizationStatus.INITIALIZED,
    )
    apply_quantization_config(model, config)
    for module in model.modules():
        if getattr(module, "quantization_scheme", None) is not None:
            w = module.weight.data
            dims = 1 if strategy == "channel" else (0, 1)
            lo, hi = torch.amin(w, dim=dims, keepdim=True), torch.amax(w, dim=dims, keepdim=True)
            scale, zero = calculate_qparams(lo, hi, weights)
            module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
            module.weight_zero_point.data.copy_(zero.reshape(module.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=ct.CompressionFormat.float_quantized.value)
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(out)
    return out


@pytest.mark.parametrize("strategy", ["tensor", "channel"])
def test_compressed_tensors_float_quantized(tmp_path: Path, strategy: str) -> None:
    dense = tiny_model(tmp_path)
    ckpt = _compressed_tensors_fp8(dense, tmp_path / "fp8", strategy)
    stored = load_file(ckpt / "model.safetensors")
    w = stored["model.layers.0.self_attn.q_proj.weight"]
    assert w.dtype == torch.float8_e4m3fn
    assert stored["model.layers.0.self_attn.q_proj.weight_scale"].numel() == (1 if strategy == "tensor" else w.shape[0])
    # The reference holds the library's own stored values times their scales.
    dequantized = {
        name[: -len("_scale")]: stored[name[: -len("_scale")]].float() * stored[name].float()
        for name in stored if name.endswith(".weight_scale")
    }
    assert_served_greedy_equals_transformers(Checkpoint(ckpt, dense, dequantized), random_prompts(3, 97))

def test_fp8_linears_are_one_byte_per_weight(tmp_path: Path) -> None:
    from tests.worker.test_engine_model import _engine

    engine = _engine(tiny_model(tmp_path), quantize="fp8")
    linears = [m for m in engine.runner.model.modules() if isinstance(m, W8Linear)]
    assert len(linears) == 8 and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)  # 4 per layer
    assert all(m.packed_bytes() == m.in_features * m.out_features + 4 * m.out_features for m in linears)
