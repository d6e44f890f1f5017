"""GPTQ checkpoints, packed as AutoGPTQ's QuantLinear.pack and GPTQModel's v2 format pack them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.quant.harness import assert_served_greedy_equals_transformers, random_prompts, tiny_model, write_checkpoint
from tests.worker.quant.rtn import Quantized, pack_words, quantize
from tests.worker.quant.test_awq import awq_config, pack_awq


def pack_gptq(qz: Quantized, version: int) -> dict[str, torch.Tensor]:
    zeros = qz.zeros - 1 if version == 1 else qz.zeros  # v1 keeps AutoGPTQ's off-by-one
    return {
        "qweight": pack_words(qz.q, qz.bits).t(),  # (K * b / 32, N): packed along the inputs
        "qzeros": pack_words(zeros.t(), qz.bits),  # (K / G, N * b / 32)
        "scales": qz.scales.t().to(torch.float16),  # (K / G, N)
        "g_idx": qz.g_idx.to(torch.int32),  # (K,)
    }


def gptq_config(bits: int, group_size: int, sym: bool, desc_act: bool, version: int) -> dict[str, object]:
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "sym": sym, "desc_act": desc_act,
            "checkpoint_format": "gptq" if version == 1 else "gptq_v2"}


CASES = [  # (family, bits, group size, sym, desc_act, checkpoint version)
    ("llama", 4, 128, True, False, 1),
    ("qwen2", 4, 64, False, True, 1),  # act order over a fused qkv with biases
    ("mistral", 4, -1, False, False, 2),  # one group per row
    ("phi3", 4, 32, True, True, 2),  # the checkpoint's own fused qkv_proj / gate_up_proj
    ("llama", 8, 64, False, True, 2),
]


@pytest.mark.parametrize(("family", "bits", "group_size", "sym", "desc_act", "version"), CASES)
def test_gptq(tmp_path: Path, family: str, bits: int, group_size: int, sym: bool, desc_act: bool, version: int) -> None:
    dense = tiny_model(tmp_path, family)
    ckpt = write_checkpoint(
        dense, tmp_path,
        lambda w: quantize(w, bits, group_size, sym=sym, act_order=desc_act, min_zero=1 if version == 1 else 0),
        lambda qz: pack_gptq(qz, version), gptq_config(bits, group_size, sym, desc_act, version),
        config_file="quantize_config.json" if family == "mistral" else "config.json",
    )
    assert_served_greedy_equals_transformers(ckpt, random_prompts(2, 97), new=12)


def test_gptq_flag_loads_an_awq_checkpoint_as_tgi_does(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tiny_model(tmp_path), tmp_path, lambda w: quantize(w, 4, 64, sym=False), pack_awq,
                            awq_config(64))
    assert_served_greedy_equals_transformers(ckpt, random_prompts(2, 97), new=8, quantize="gptq")
