"""W8Linear's CUDA paths (worker/quant/w8.py): which candidates each row count gets, and the one
the first-use timing keeps, replayed from a CUDA graph."""

from __future__ import annotations

import pytest
import torch

from worker.quant.w8 import W8Linear, w8_choices

FP8 = torch.float8_e4m3fn


def _layer(n: int, k: int, kind: torch.dtype, device: torch.device) -> W8Linear:
    gen = torch.Generator().manual_seed(21)
    w = (torch.randn(n, k, generator=gen) * 100).clamp(-448, 448).to(kind)
    return W8Linear(w, torch.rand(n, generator=gen) / (100 * k**0.5), None, torch.bfloat16, device)


@pytest.mark.parametrize("kind", [FP8, torch.int8])
def test_candidates_per_row_count(kind: torch.dtype) -> None:
    down = _layer(16, 8192, kind, torch.device("cpu"))  # K long enough to split
    o = _layer(16, 1024, kind, torch.device("cpu"))
    one, few, many = (set(down._paths(torch.zeros(r, 8192))) for r in (1, 16, 17))
    fp8 = kind == FP8
    assert "w8_gemv 8x1024/w8/s3/split2" in one and "w8_gemv 2x2048/w4/s4" in one
    assert ("w8_gemv 2x2048/w4/s4/bits" in one) != fp8
    assert not fp8 or not any(name.endswith("/bits") for name in one | few)
    assert any(name.startswith("w8a8_gemv") for name in one | few) == fp8
    assert not any(name.startswith("w8_linear") for name in one)
    assert "w8_gemv 8x1024/w8/s3" in few and "w8_gemv 2x2048/w4/s4" not in few
    assert any(name.startswith("w8_linear") for name in few)
    assert not any(name.startswith(("w8_gemv", "w8a8_gemv")) for name in many)
    assert not any("split" in name and "split0" not in name for name in o._paths(torch.zeros(1, 1024)))
    first = next(iter(down._paths(torch.zeros(1, 8192))))  # what a capture before the timing runs
    assert "split" not in first


def test_the_timing_leaves_out_paths_that_fail_or_disagree(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import ops
    from worker.quant import w8

    x = torch.randn(4, 8)

    def broken() -> torch.Tensor:
        raise RuntimeError("no such instruction on this card")

    paths = {"first": lambda: x * 1.0, "close": lambda: x * 1.02, "garbage": lambda: x * 2.0, "broken": broken}
    speed = {paths["first"]: 3.0, paths["close"]: 2.0, paths["garbage"]: 1.0, paths["broken"]: 0.5}
    monkeypatch.setattr(ops, "gpu_milliseconds", lambda fn, graphed: speed[fn])  # a card's timings, by path
    assert w8._fastest(paths) == "close"  # W8A8's few percent pass; 2x and a failure do not


@pytest.mark.gpu
def test_w8linear_picks_a_path_per_row_bucket_and_replays_it() -> None:
    from genfleet_kernels import reference as ref
    from tests.genfleet_kernels.conftest import assert_close

    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(15)
    layer = _layer(6144, 4096, FP8, device)
    for rows in (1, 2, 4, 8, 16):
        x = torch.randn(rows, 4096, generator=gen).to(device, torch.bfloat16)
        eager = layer(x)  # times the candidates of this bucket, keeps the fastest
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layer(x)
        graph.replay()
        assert torch.equal(out, eager)
        assert f"fp8 4096x6144 batch<={rows}" in w8_choices()
        assert_close(eager, ref.w8_linear(x, layer.weight, layer.scale), torch.bfloat16, 8)
