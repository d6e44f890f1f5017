"""genfleet_kernels/paged_kv.py: FP8 values read as int32 words become float16 exactly, by moving bits."""

from __future__ import annotations

import pytest
import torch

from tests.genfleet_kernels.conftest import ON_GPU  # noqa: F401  (sets the interpreter off a GPU)

triton = pytest.importorskip("triton")
tl = triton.language

from genfleet_kernels.paged_kv import fp8_word_unit, fp8_words_as_f16  # noqa: E402


@triton.jit
def _words_kernel(w_ptr, out_ptr, ROWS: tl.constexpr, WORDS: tl.constexpr, E4M3: tl.constexpr):
    r = tl.arange(0, ROWS)
    c = tl.arange(0, WORDS)
    w = tl.load(w_ptr + r[:, None] * WORDS + c[None, :])
    x = fp8_words_as_f16(w, E4M3)  # (ROWS, 4 * WORDS)
    c4 = tl.arange(0, 4 * WORDS)
    tl.store(out_ptr + r[:, None] * (4 * WORDS) + c4[None, :], x)


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_every_fp8_value_read_from_words_is_its_float16_times_the_unit(fp8: torch.dtype, device: torch.device) -> None:
    # All 256 bit patterns, shuffled so each byte position of a word sees signs, subnormals, zeros
    # and the largest values; e4m3fn's two NaN patterns are left out (the KV store never writes them).
    gen = torch.Generator().manual_seed(3)
    bits = torch.arange(256, dtype=torch.int32)
    values = bits.to(torch.uint8).view(fp8)
    keep = ~values.float().isnan()
    codes = bits[keep]
    codes = codes[torch.randperm(codes.numel(), generator=gen)]
    codes = torch.cat([codes, codes[: (-codes.numel()) % 64]])  # (4 * rows * words,)
    rows, words = 4, codes.numel() // 16
    pages = codes.to(torch.uint8).view(fp8).reshape(rows, 4 * words).to(device)
    out = torch.empty(rows, 4 * words, dtype=torch.float16, device=device)
    _words_kernel[(1,)](pages.view(torch.int32), out, ROWS=rows, WORDS=words, E4M3=fp8 == torch.float8_e4m3fn)
    want = pages.to(torch.float16) * fp8_word_unit(fp8)  # exact: a power of two within float16's range
    assert torch.equal(out.view(torch.int16), want.view(torch.int16)), (out - want).abs().max()
