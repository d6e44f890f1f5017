"""Kernel tests run natively on a GPU, else under Triton's CPU interpreter (small shapes)."""

from __future__ import annotations

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    # Read when a kernel is decorated, so it must be set before any kernels.* module imports.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if ON_GPU else "cpu")


def tolerance(dtype: torch.dtype) -> float:
    return {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    assert not torch.isnan(actual).any()
    tol = tolerance(dtype) * scale
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)
