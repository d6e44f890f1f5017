"""Two CPU ranks (gloo) against the unsharded runner: every family, and the KV-head counts TGI refuses
(tests/worker/parallel/tp_probe.py runs both; these tests read what it saved)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.worker.test_models import FAMILIES, _save

# Beside the families' own tiny configs (4 heads, 2 KV heads): KV heads that do not divide 2,
# a single KV head, and the default model's 9 heads over 3 KV heads (5 and 4 query heads a rank).
HEAD_SHAPES = {
    "kv3": ("llama", {"num_attention_heads": 6, "num_key_value_heads": 3, "hidden_size": 96}),
    "kv1": ("llama", {"num_attention_heads": 4, "num_key_value_heads": 1}),
    "heads9_kv3": ("llama", {"num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 72,
                            "intermediate_size": 97}),
    "qwen2_kv1": ("qwen2", {"num_attention_heads": 4, "num_key_value_heads": 1}),
    # Expert FFN widths that do not divide 2 (49 and 48 columns a rank), a shared expert's too.
    "mixtral_ffn97": ("mixtral", {"intermediate_size": 97}),
    "qwen2_moe_odd": ("qwen2_moe", {"moe_intermediate_size": 33, "shared_expert_intermediate_size": 47}),
}
# Refused when sharded (tests/worker/parallel/test_plan.py): OLMo 2's q/k norms over all heads.
UNSHARDABLE = {"olmo2"}
FAMILY_MODELS = sorted(set(FAMILIES) - UNSHARDABLE)
MODELS = FAMILY_MODELS + sorted(HEAD_SHAPES)


def _probe(out: Path, dirs: list[Path], *options: str) -> Path:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "tests.worker.parallel.tp_probe", *options, str(out), *map(str, dirs)],
                   env=env, check=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tp")
    dirs = [_save(root, name)[0] for name in FAMILY_MODELS]
    for name, (family, extra) in HEAD_SHAPES.items():
        dirs.append(_save(root, family, extra, name=name)[0])
    return _probe(root / "out", dirs)


@pytest.mark.parametrize("model", MODELS)
def test_sharded_logits_match_unsharded_after_prefill_and_16_decode_steps(probed: Path, model: str) -> None:
    got = torch.load(probed / f"{model}.pt")
    assert len(got["sharded"]) == 17  # the prefill, then 16 decode steps
    for step, (ours, theirs) in enumerate(zip(got["sharded"], got["reference"], strict=True)):
        assert ours.shape == theirs.shape, step
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4, msg=lambda m, s=step: f"step {s}: {m}")
        assert torch.equal(ours.argmax(-1), theirs.argmax(-1)), step


@pytest.mark.parametrize("model", MODELS)
def test_overlapped_greedy_through_the_engine_matches_unsharded(probed: Path, model: str) -> None:
    got = torch.load(probed / f"{model}.pt")
    assert got["sharded_greedy"] == got["reference_greedy"]
    assert all(len(tokens) == 12 for tokens in got["sharded_greedy"])


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_fp8_on_load_quantizes_each_ranks_slice_no_worse_than_the_whole(tmp_path: Path, family: str) -> None:
    # Row-parallel slices get scales of their own (per output row of each rank's columns; each
    # expert's down projection too), so the sharded fp8 model is not the unsharded one bit for
    # bit; it must be as close to the dense model.
    got = torch.load(_probe(tmp_path / "out", [_save(tmp_path, family)[0]], "--quantize", "fp8") / f"{family}.pt")
    for step, (ours, theirs, dense) in enumerate(zip(got["sharded"], got["reference"], got["dense"], strict=True)):
        ours_err, theirs_err = (ours - dense).abs().max(), (theirs - dense).abs().max()
        assert 0 < ours_err <= 1.5 * theirs_err, (step, float(ours_err), float(theirs_err))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_nccl_with_decode_graphs_match_unsharded(tmp_path: Path) -> None:
    # NCCL, the all-reduces captured in the decode CUDA graphs, placeholders broadcast on the device.
    models = [_save(tmp_path, "llama")[0], _save(tmp_path, "llama", HEAD_SHAPES["kv3"][1], name="kv3")[0]]
    out = _probe(tmp_path / "out", models, "--device", "cuda")
    for model in ("llama", "kv3"):
        got = torch.load(out / f"{model}.pt")
        for ours, theirs in zip(got["sharded"], got["reference"], strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)  # Triton kernels, float32
        assert got["sharded_greedy"] == got["reference_greedy"]
