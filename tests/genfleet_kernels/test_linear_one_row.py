"""linear_one_row against torch's linear: odd sizes, tails in both dimensions, with and without bias,
one row and a few (each row computed as if alone)."""

from __future__ import annotations

import pytest
import torch

from tests.genfleet_kernels.conftest import ON_GPU, assert_close

pytest.importorskip("triton")

from genfleet_kernels.linear_one_row import MAX_ROWS, linear_one_row  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(64, 8), (96, 37), (600, 129)] + ([(4096, 6144), (14336, 4096)] if ON_GPU else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("k", "n"), SHAPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 5])
def test_linear_one_row(k: int, n: int, dtype: torch.dtype, bias: bool, rows: int, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(rows, k, generator=gen).to(device, dtype)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(device, dtype)
    b = torch.randn(n, generator=gen).to(device, dtype) if bias else None
    want = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    for config in ((8, 512, 4, 3), (4, 32, 1, 1)):
        got = linear_one_row(x, w, b, *config)
        assert got.shape == (rows, n) and got.dtype == dtype
        assert_close(got, want, dtype, 2)
        # Each row has the bits it gets alone: a verification row's as a plain decode's.
        alone = torch.cat([linear_one_row(x[m : m + 1], w, b, *config) for m in range(rows)])
        assert torch.equal(got, alone)


def test_refuses_more_rows_than_it_takes(device: torch.device) -> None:
    with pytest.raises(AssertionError, match="rows expected"):
        linear_one_row(torch.zeros(MAX_ROWS + 1, 8, device=device), torch.zeros(4, 8, device=device))


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs CUDA")
def test_ops_linear_picks_per_shape_and_matches_torch() -> None:
    from worker import ops

    ops.use_device(torch.device("cuda"))
    for k, n in ((4096, 4096), (576, 960)):
        x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") / k**0.5
        for graphed in (False, True):
            assert_close(ops.linear(x, w, graphed=graphed), torch.nn.functional.linear(x, w), torch.bfloat16, 2)
        assert {f"{k}x{n}", f"{k}x{n} graphed"} <= set(ops.one_row_choices())
    five = torch.randn(5, 576, dtype=torch.float32, device="cuda")  # a batch-1 verification's rows
    w = torch.randn(960, 576, dtype=torch.float32, device="cuda") / 576**0.5
    assert_close(ops.linear(five, w, graphed=True), torch.nn.functional.linear(five, w), torch.float32, 2)
    assert "576x960 at 5 rows graphed" in ops.one_row_choices()
    many = torch.randn(17, 4096, dtype=torch.bfloat16, device="cuda")
    w = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    assert torch.equal(ops.linear(many, w), torch.nn.functional.linear(many, w))  # past MAX_ROWS: torch
