"""Programmatic dependent launch (genfleet_kernels/pdl.py): off where it cannot run; on a Hopper GPU a chain of
taking part kernels (a decoder layer's norm -> linear -> activation -> linear, many times over)
gives the same bits with it on as off, eagerly and replayed from a CUDA graph."""

from __future__ import annotations

import pytest
import torch

from tests.genfleet_kernels.conftest import ON_GPU

pytest.importorskip("triton")

from genfleet_kernels import pdl  # noqa: E402


def test_off_on_the_cpu_and_under_the_interpreter() -> None:
    try:
        assert pdl.enable(True, torch.device("cpu")) is False
        assert pdl.launch() == {"PDL": False}
        if not ON_GPU:  # the kernels run under TRITON_INTERPRET here
            assert pdl.enable(True, torch.device("cuda")) is False
    finally:
        pdl.enable(False)
    assert not pdl.enabled()


def _layers(x: torch.Tensor, weights: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    from genfleet_kernels.linear_one_row import linear_one_row
    from genfleet_kernels.rms_norm import rms_norm
    from genfleet_kernels.silu_and_mul import silu_and_mul

    hidden, residual = x, torch.zeros_like(x)
    for norm, up, down in weights:
        normed, residual = rms_norm(hidden, norm, 1e-5, residual)
        hidden = linear_one_row(silu_and_mul(linear_one_row(normed, up)), down)
    return hidden + residual


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU or torch.cuda.get_device_capability() < (9, 0), reason="needs an sm_90+ GPU")
def test_a_chain_gives_the_same_bits_with_and_without_it() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden, inter = 1024, 2816
    weights = [
        (torch.rand(hidden, device="cuda", generator=gen).bfloat16() + 0.5,
         (torch.randn(2 * inter, hidden, device="cuda", generator=gen) / hidden**0.5).bfloat16(),
         (torch.randn(hidden, inter, device="cuda", generator=gen) / inter**0.5).bfloat16())
        for _ in range(24)
    ]
    x = torch.randn(1, hidden, device="cuda", generator=gen).bfloat16()
    results = {}
    try:
        for on in (False, True):
            assert pdl.enable(on, torch.device("cuda")) is on
            eager = _layers(x, weights)
            _layers(x, weights)  # compiled outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                replayed = _layers(x, weights)
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(replayed, eager)
            results[on] = eager
    finally:
        pdl.enable(False)
    assert torch.equal(results[True], results[False])
