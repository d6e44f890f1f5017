"""load/quantize_model.py: a GPTQ-calibrated tiny model, packed by the tests' packers, served exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from load.quantize_model import calibrated_gptq
from tests.worker.quant.harness import LINEAR, assert_served_greedy_equals_transformers, random_prompts, tiny_model, write_quantized
from tests.worker.quant.test_awq import awq_config, pack_awq
from tests.worker.quant.test_gptq import gptq_config, pack_gptq


@pytest.mark.parametrize("layout", ["awq", "gptq"])
def test_calibrated_checkpoint_serves_its_dequantized_weights(tmp_path: Path, layout: str) -> None:
    dense = tiny_model(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(dense, dtype=torch.float32).eval()
    calibration = torch.randint(3, 97, (2, 48), generator=torch.Generator().manual_seed(3))  # (S, T)
    results = calibrated_gptq(model, calibration, group_size=64, act_order=layout == "gptq")
    assert {f"{n}.weight" for n, _ in model.named_modules() if LINEAR.match(f"{n}.weight")} == set(results)
    # The model is left holding what it quantized.
    assert torch.equal(model.get_submodule("model.layers.1.mlp.down_proj").weight,
                       results["model.layers.1.mlp.down_proj.weight"].dequantized())
    pack, config = (pack_awq, awq_config(64)) if layout == "awq" else \
        (lambda qz: pack_gptq(qz, 2), gptq_config(4, 64, False, False, 2))
    ckpt = write_quantized(dense, tmp_path, lambda name, _w: results[name], pack, config)
    assert_served_greedy_equals_transformers(ckpt, random_prompts(2, 97), new=8, quantize=layout)
