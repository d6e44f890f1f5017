"""The batched LoRA kernels (shrink x@A, expand @B, per segment's adapter) against the torch reference."""

from __future__ import annotations

import pytest
import torch

from tests.genfleet_kernels.conftest import ON_GPU, assert_close

pytest.importorskip("triton")

from genfleet_kernels import reference as ref  # noqa: E402
from genfleet_kernels.lora import lora_add  # noqa: E402

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])


def _segments(lengths: list[int], slots: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    return (torch.tensor(starts, dtype=torch.int32, device=device),
            torch.tensor(slots, dtype=torch.int32, device=device))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("lengths", "slots", "k_in", "n_out", "rank"), [
    ([1, 1, 1, 1, 1], [0, -1, 2, 0, 1], 64, 96, 8),  # decode rows of three adapters and the base
    ([19, 1, 33], [1, -1, 1], 48, 40, 24),  # prefill chunks longer than a row block; odd widths
    ([5], [-1], 32, 32, 16),  # the base alone: out unchanged
] + ([([1] * 40 + [300, 7], [i % 3 for i in range(40)] + [2, -1], 4096, 6144, 48)] if ON_GPU else []))
def test_lora_add_matches_the_reference(lengths: list[int], slots: list[int], k_in: int, n_out: int, rank: int,
                                        dtype: torch.dtype, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(sum(lengths) + rank)
    tokens, num_slots = sum(lengths), 3
    x = torch.randn(tokens, k_in, generator=gen).to(device, dtype)
    a = (torch.randn(num_slots, rank, k_in, generator=gen) / k_in**0.5).to(device, dtype)
    b = torch.randn(num_slots, n_out, rank, generator=gen).to(device, dtype)
    base = torch.randn(tokens, n_out, generator=gen).to(device, dtype)
    starts, seg_slots = _segments(lengths, slots, device)
    got, want = base.clone(), base.clone()
    lora_add(got, x, a, b, starts, seg_slots, max(lengths))
    ref.lora_add(want, x, a, b, starts, seg_slots, max(lengths))
    assert_close(got, want, dtype, 4)
    for s, slot in enumerate(slots):  # base rows are left exactly as they were
        if slot < 0:
            assert torch.equal(got[starts[s] : starts[s + 1]], base[starts[s] : starts[s + 1]])


def test_reference_is_the_merged_weight() -> None:
    # Each row's output equals x @ (W + B[slot] @ A[slot]).T: what a merged adapter computes.
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(24, 16, generator=gen, dtype=torch.float64)
    a = torch.randn(2, 4, 16, generator=gen, dtype=torch.float64)
    b = torch.randn(2, 24, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(6, 16, generator=gen, dtype=torch.float64)
    starts, slots = _segments([2, 1, 3], [1, -1, 0], torch.device("cpu"))
    out = x @ w.T
    ref.lora_add(out, x, a, b, starts, slots, 3)
    merged = [w + b[1] @ a[1]] * 2 + [w] + [w + b[0] @ a[0]] * 3
    want = torch.stack([row @ m.T for row, m in zip(x, merged, strict=True)])
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)  # the reference multiplies in float32
