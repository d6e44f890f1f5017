"""The FP8 KV cache (--kv-cache-dtype): its layout and sizing, and a model served over it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.config import ConfigError, WorkerConfig
from common.sampling_params import SamplingParams
from tests.worker.test_model_runner import TinyScheduler, _tiny_llama
from worker.kv_cache import KVCache, bytes_per_block, resolve_kv_dtype
from worker.model_runner import ModelRunner


def test_fp8_pages_hold_about_twice_the_tokens_of_bf16_ones() -> None:
    for head_dim, at_least in ((128, 1.96), (64, 1.93)):
        bf16 = bytes_per_block(32, 16, 8, head_dim, torch.bfloat16)
        for name in ("fp8_e4m3fn", "fp8_e5m2"):
            assert bf16 / bytes_per_block(32, 16, 8, head_dim, resolve_kv_dtype(name, torch.bfloat16)) >= at_least
    kv = KVCache.allocate(2, 3, 4, 2, 8, torch.float8_e5m2, torch.device("cpu"))
    layer = kv.layers[0]
    assert layer.k.dtype == torch.float8_e5m2 and layer.k.shape == (3, 4, 2, 8)
    assert layer.k_scale is not None and layer.k_scale.shape == (3, 4, 2) and layer.k_scale.dtype == torch.float16
    assert KVCache.allocate(1, 3, 4, 2, 8, torch.bfloat16, torch.device("cpu")).layers[0].k_scale is None


def test_kv_cache_dtype_is_one_of_tgis_values() -> None:
    with pytest.raises(ConfigError, match="fp8_e4m3fn, fp8_e5m2"):
        WorkerConfig(kv_cache_dtype="fp8")


@pytest.mark.parametrize("kv_cache_dtype", ["fp8_e4m3fn", "fp8_e5m2"])
def test_a_model_over_fp8_pages_stays_close_to_full_precision(tmp_path: Path, kv_cache_dtype: str) -> None:
    path, _ = _tiny_llama(tmp_path)
    prompt = torch.randint(1, 97, (21,), generator=torch.Generator().manual_seed(5)).tolist()
    results = {}
    for kv in (None, kv_cache_dtype):
        runner = ModelRunner(
            WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=256, block_size=8, kv_cache_dtype=kv), path
        )
        # Chunked prefill: the second chunk and every decode read the first chunk back from FP8 pages.
        sched = TinyScheduler(runner, chunk=12)
        sched.add("r", prompt, SamplingParams(max_new_tokens=4, prefill_logprobs=True, top_n_tokens=3))
        while sched.busy():
            sched.run_step()
        results[kv] = sched.reqs["r"]
    plain, fp8 = results[None], results[kv_cache_dtype]
    tol = 0.05 if kv_cache_dtype == "fp8_e4m3fn" else 0.1
    torch.testing.assert_close(torch.tensor(fp8["prefill"]), torch.tensor(plain["prefill"]), rtol=tol, atol=tol)
    torch.testing.assert_close(torch.tensor(fp8["lps"]), torch.tensor(plain["lps"]), rtol=tol, atol=tol)
