"""AutoAWQ GEMM checkpoints, packed here as AutoAWQ's WQLinear_GEMM.from_linear packs them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.quant.harness import assert_served_greedy_equals_transformers, random_prompts, tiny_model, write_checkpoint
from tests.worker.quant.rtn import Quantized, pack_words, quantize

ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ's order_map: nibble i of a word <- output column 8j + ORDER[i]


def pack_awq(qz: Quantized) -> dict[str, torch.Tensor]:
    def interleave(values: torch.Tensor) -> torch.Tensor:  # (R, N) -> (R, N / 8) int32
        r, n = values.shape
        return pack_words(values.reshape(r, n // 8, 8)[:, :, ORDER].reshape(r, n), 4)

    return {
        "qweight": interleave(qz.q.t()),  # (K, N / 8)
        "qzeros": interleave(qz.zeros.t()),  # (K / G, N / 8)
        "scales": qz.scales.t().to(torch.float16),  # (K / G, N)
    }


def awq_config(group_size: int) -> dict[str, object]:
    return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm"}


@pytest.mark.parametrize("group_size", [32, 128])
def test_tiny_llama_awq(tmp_path: Path, group_size: int) -> None:
    dense = tiny_model(tmp_path)
    ckpt = write_checkpoint(dense, tmp_path, lambda w: quantize(w, 4, group_size, sym=False), pack_awq,
                            awq_config(group_size))
    assert_served_greedy_equals_transformers(ckpt, random_prompts(3, 97))


def test_default_model_awq_group_64(default_model_dir: Path, tmp_path: Path) -> None:
    ckpt = write_checkpoint(default_model_dir, tmp_path, lambda w: quantize(w, 4, 64, sym=False), pack_awq,
                            awq_config(64))
    prompts = {"q": [1, 504, 3575, 282, 4649, 314], "code": [563, 28340, 30, 94, 2730]}
    assert_served_greedy_equals_transformers(ckpt, prompts, new=12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("overlap", [False, True], ids=["one-step", "overlapped"])
def test_awq_on_cuda_under_graphs_chunked_prefill_and_the_prefix_cache(tmp_path: Path, overlap: bool) -> None:
    # float32 activations, so the Triton kernels' tokens can equal transformers' float32 ones.
    dense = tiny_model(tmp_path)
    ckpt = write_checkpoint(dense, tmp_path, lambda w: quantize(w, 4, 64, sym=False), pack_awq, awq_config(64))
    prompts = random_prompts(4, 97)
    prompts["shared"] = prompts["p0"] + [5, 6, 7]  # its prefix is cached by the time it runs
    assert_served_greedy_equals_transformers(ckpt, prompts, new=24, overlap=overlap, device="cuda", dtype="float32",
                                             max_batch_prefill_tokens=16)
