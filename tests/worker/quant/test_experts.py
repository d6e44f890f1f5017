"""Quantized experts of mixture-of-experts models (worker/quant/experts.py): `--quantize fp8` on the
fly, and AWQ / GPTQ checkpoints whose every expert projection is a quantized linear (Mixtral's
block_sparse_moe.experts.E.w1/w2/w3, Qwen2-MoE's mlp.experts.E.*_proj beside its shared expert),
packed by the tests' own packers; served greedy tokens against transformers' float32 model on
exactly the dequantized weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.worker.quant.harness import (
    assert_served_greedy_equals_transformers,
    on_the_fly,
    random_prompts,
    tiny_model,
    write_checkpoint,
)
from tests.worker.quant.rtn import Quantized, pack_words, quantize
from tests.worker.quant.test_awq import awq_config, pack_awq
from tests.worker.quant.test_fp8 import fp8_per_channel
from tests.worker.quant.test_gptq import gptq_config, pack_gptq
from tests.worker.quant.test_marlin import pack_marlin
from tests.worker.test_engine_model import _engine
from worker.models import UnsupportedModel
from worker.models.moe import SparseMoE
from worker.quant import QuantizationError
from worker.quant.experts import QuantExperts

# Four experts, top-2; Qwen2-MoE with a shared expert and unnormalized routing weights.
MOE = {
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                  "shared_expert_intermediate_size": 128, "norm_topk_prob": False},
}


def _tiny_moe(root: Path, family: str) -> Path:
    return tiny_model(root, family, **MOE[family])


def _experts(engine: object) -> list[QuantExperts]:
    model = engine.runner.model  # type: ignore[attr-defined]
    stacks = [getattr(m, name) for m in model.modules() if isinstance(m, SparseMoE) for name in ("w13", "w2")]
    assert stacks and all(isinstance(s, QuantExperts) for s in stacks), "experts left dense"
    return stacks  # type: ignore[return-value]


@pytest.mark.parametrize("family", sorted(MOE))
def test_fp8_experts_on_the_fly(tmp_path: Path, family: str) -> None:
    dense = _tiny_moe(tmp_path, family)
    assert_served_greedy_equals_transformers(on_the_fly(dense, fp8_per_channel), random_prompts(3, 97), quantize="fp8")
    engine = _engine(dense, quantize="fp8")
    assert all(s.weight.dtype == torch.float8_e4m3fn and s.scale.shape == s.weight.shape[:2] for s in _experts(engine))


@pytest.mark.parametrize(("family", "group_size"), [("mixtral", 32), ("qwen2_moe", 64)])
def test_awq_experts(tmp_path: Path, family: str, group_size: int) -> None:
    ckpt = write_checkpoint(_tiny_moe(tmp_path, family), tmp_path, lambda w: quantize(w, 4, group_size, sym=False),
                            pack_awq, awq_config(group_size))
    assert "model.layers.0.mlp.experts.0.w1.qweight" not in ckpt.dequantized  # the reference holds weights
    assert_served_greedy_equals_transformers(ckpt, random_prompts(3, 97))


CASES = [  # (family, bits, group size, sym, checkpoint version)
    ("mixtral", 4, 64, True, 1),
    ("qwen2_moe", 8, 32, False, 2),
    ("mixtral", 4, -1, False, 2),  # one group per row
]


@pytest.mark.parametrize(("family", "bits", "group_size", "sym", "version"), CASES)
def test_gptq_experts(tmp_path: Path, family: str, bits: int, group_size: int, sym: bool, version: int) -> None:
    ckpt = write_checkpoint(
        _tiny_moe(tmp_path, family), tmp_path,
        lambda w: quantize(w, bits, group_size, sym=sym, min_zero=1 if version == 1 else 0),
        lambda qz: pack_gptq(qz, version), gptq_config(bits, group_size, sym, False, version),
    )
    engine = _engine(ckpt.path)
    assert all(s.bits == bits for s in _experts(engine))
    assert_served_greedy_equals_transformers(ckpt, random_prompts(2, 97), new=12)


def test_marlin_experts(tmp_path: Path) -> None:
    # Marlin's shape limits (in_features % 128, out_features % 256) for every linear and expert.
    dense = tiny_model(tmp_path, "mixtral", hidden_size=256, intermediate_size=256, num_attention_heads=2,
                       num_key_value_heads=2, head_dim=128, **MOE["mixtral"])
    config = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False,
              "checkpoint_format": "marlin"}
    ckpt = write_checkpoint(dense, tmp_path, lambda w: quantize(w, 4, 128, sym=True), pack_marlin, config)
    assert_served_greedy_equals_transformers(ckpt, random_prompts(2, 97), new=8)


def _pack_ct(qz: Quantized) -> dict[str, torch.Tensor]:
    # compressed-tensors pack-quantized, from its definition (worker/quant/compressed_tensors.py's
    # header): unsigned values packed along the inputs, zero points along the outputs.
    n, k = qz.q.shape
    return {"weight_packed": pack_words(qz.q, qz.bits), "weight_scale": qz.scales,
            "weight_zero_point": pack_words(qz.zeros.t(), qz.bits).t(), "weight_shape": torch.tensor([n, k])}


@dataclass
class _Fp8Rows:
    weight: torch.Tensor  # (N, K) e4m3
    scale: torch.Tensor  # (N, 1) float32

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scale


def _fp8_rows(w: torch.Tensor) -> _Fp8Rows:
    scale = w.abs().amax(1, keepdim=True) / 448.0
    return _Fp8Rows((w / scale).to(torch.float8_e4m3fn), scale)


def test_compressed_tensors_experts(tmp_path: Path) -> None:
    dense = _tiny_moe(tmp_path, "qwen2_moe")
    weights = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 32, "symmetric": False}
    config = {"quant_method": "compressed-tensors", "format": "pack-quantized",
              "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "format": "pack-quantized"}}}
    ckpt = write_checkpoint(dense, tmp_path, lambda w: quantize(w, 4, 32, sym=False), _pack_ct, config)
    assert_served_greedy_equals_transformers(ckpt, random_prompts(2, 97), new=8)


def test_compressed_tensors_fp8_experts(tmp_path: Path) -> None:
    dense = _tiny_moe(tmp_path, "mixtral")
    weights = {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True}
    config = {"quant_method": "compressed-tensors", "format": "float-quantized",
              "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "format": "float-quantized"}}}
    ckpt = write_checkpoint(dense, tmp_path, _fp8_rows, lambda q: {"weight": q.weight, "weight_scale": q.scale}, config)
    assert_served_greedy_equals_transformers(ckpt, random_prompts(2, 97), new=8)
    assert all(s.is_fp8 for s in _experts(_engine(ckpt.path)))


def test_act_order_experts_are_refused_by_name(tmp_path: Path) -> None:
    ckpt = write_checkpoint(_tiny_moe(tmp_path, "mixtral"), tmp_path,
                            lambda w: quantize(w, 4, 32, sym=True, act_order=True, min_zero=1),
                            lambda qz: pack_gptq(qz, 1), gptq_config(4, 32, True, True, 1))
    with pytest.raises(QuantizationError, match=r"layers\.0\.mlp\.w13: act order \(desc_act\) experts are not supported"):
        _engine(ckpt.path)


def test_a_method_that_does_not_cover_experts_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match="MixtralForCausalLM: quantization bitsandbytes-nf4 does not cover its "
                                               "experts; experts load quantized with awq, compressed-tensors, fp8, gptq, marlin"):
        _engine(_tiny_moe(tmp_path, "mixtral"), quantize="bitsandbytes-nf4")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["fp8", "awq"])
def test_quantized_experts_on_cuda_under_graphs_and_chunked_prefill(tmp_path: Path, kind: str) -> None:
    # The fused MoE kernel's FP8 and integer variants, float32 activations so that the tokens can
    # equal transformers' float32 ones; decode steps replay CUDA graphs.
    dense = _tiny_moe(tmp_path, "mixtral")
    if kind == "fp8":
        ckpt, worker = on_the_fly(dense, fp8_per_channel), {"quantize": "fp8"}
    else:
        ckpt, worker = write_checkpoint(dense, tmp_path, lambda w: quantize(w, 4, 64, sym=False), pack_awq,
                                        awq_config(64)), {}
    assert_served_greedy_equals_transformers(ckpt, random_prompts(4, 97), new=24, device="cuda", dtype="float32",
                                             max_batch_prefill_tokens=16, **worker)
