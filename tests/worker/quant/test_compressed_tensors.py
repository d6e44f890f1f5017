"""compressed-tensors pack-quantized checkpoints, written by the compressed-tensors library itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from tests.worker.quant.harness import Checkpoint, assert_served_greedy_equals_transformers, random_prompts, tiny_model

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors import ModelCompressor  # noqa: E402
from compressed_tensors.quantization import (  # noqa: E402
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    apply_quantization_config,
)
from compressed_tensors.quantization.lifecycle.forward import fake_quantize  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402


def write_ct_checkpoint(dense: Path, root: Path, args: QuantizationArgs) -> Checkpoint:
    """The library's recipe: attach the scheme, set round-to-nearest qparams, compress, save."""
    model = transformers.AutoModelForCausalLM.from_pretrained(dense, dtype=torch.float32)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"],
                                                        format="pack-quantized"))
    dequantized = {}
    for name, module in model.named_modules():
        if not hasattr(module, "weight_scale"):
            continue
        w = module.weight.data
        n, k = w.shape
        size = args.group_size if args.strategy == "group" else k
        grouped = w.reshape(n, k // size, size)
        scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args)
        module.weight_scale.data.copy_(scale)
        if hasattr(module, "weight_zero_point"):
            module.weight_zero_point.data.copy_(zero)
        dequantized[f"{name}.weight"] = fake_quantize(w, scale, zero, args).float()
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    path = root / "ct"
    model.save_pretrained(path)
    compressor.update_config(path)
    return Checkpoint(path, dense, dequantized)


CASES = [  # (family, bits, strategy, group size, symmetric)
    ("qwen3", 4, "group", 32, False),
    ("llama", 4, "channel", None, True),
    ("llama", 8, "group", 64, True),
]


@pytest.mark.parametrize(("family", "bits", "strategy", "group_size", "symmetric"), CASES)
def test_compressed_tensors(tmp_path: Path, family: str, bits: int, strategy: str, group_size: int | None,
                            symmetric: bool) -> None:
    extra = {"head_dim": 32} if family == "qwen3" else {}
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy=strategy, group_size=group_size)
    ckpt = write_ct_checkpoint(tiny_model(tmp_path, family, **extra), tmp_path, args)
    assert_served_greedy_equals_transformers(ckpt, random_prompts(2, 97), new=12)
