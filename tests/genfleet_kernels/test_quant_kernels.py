"""FP8 activation quantization and the one-byte-weight linear against genfleet_kernels/reference.py."""

from __future__ import annotations

import pytest
import torch

from tests.genfleet_kernels.conftest import ON_GPU, assert_close

pytest.importorskip("triton")

from genfleet_kernels import reference as ref  # noqa: E402
from genfleet_kernels.dequantize_4bit import dequantize_4bit  # noqa: E402
from genfleet_kernels.lut4_gemv import lut4_gemv  # noqa: E402
from genfleet_kernels.quantize_fp8_rows import quantize_fp8_rows  # noqa: E402
from genfleet_kernels.w8_gemv import GEMV_CONFIGS, w8_gemv  # noqa: E402
from genfleet_kernels.w8_linear import W8_CONFIGS, w8_linear  # noqa: E402

# Triton's CPU interpreter multiplies bfloat16 tiles wrong: bfloat16 products run on the GPU only.
DOT_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("m", "k"), [(1, 64), (5, 200)] + ([(300, 14336)] if ON_GPU else []))
def test_quantize_fp8_rows_is_bit_exact(m: int, k: int, dtype: torch.dtype, fp8: torch.dtype, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(m, k, generator=gen) * torch.logspace(-2, 2, m).unsqueeze(1)).to(device, dtype)
    x[0, :4] = torch.tensor([-1e-9, 1e-9, -3e-4, 3e-4]).to(x) * x[0].abs().max()  # underflow: signed zeros, subnormals
    if m > 1:
        x[1] = 0  # a row of zeros quantizes to zeros
    got, got_scale = quantize_fp8_rows(x, fp8)
    want, want_scale = ref.quantize_fp8_rows(x, fp8)
    assert got.dtype == fp8 and got_scale.shape == (m, 1)
    assert torch.equal(got_scale, want_scale)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    # What comes back is x within FP8's step (relative to each row's largest value).
    step = 2.0**-4 if fp8 == torch.float8_e4m3fn else 2.0**-3
    back = got.float() * got_scale
    assert ((back - x.float()).abs() <= step * x.float().abs().amax(1, keepdim=True)).all()


@pytest.mark.parametrize("weight_dtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("dtype", DOT_DTYPES)
@pytest.mark.parametrize(("m", "k", "n"), [(1, 64, 48), (3, 200, 40), (17, 96, 130)] + ([(64, 4096, 6144)] if ON_GPU else []))
@pytest.mark.parametrize("bias", [False, True])
def test_w8_linear(m: int, k: int, n: int, dtype: torch.dtype, weight_dtype: torch.dtype, bias: bool, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(m, k, generator=gen).to(device, dtype)
    if weight_dtype == torch.int8:
        w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8).to(device)
        scale = (torch.rand(n, generator=gen) / (127 * k**0.5)).to(device)
    else:
        w = (torch.randn(n, k, generator=gen) * 100).clamp(-448, 448).to(device, weight_dtype)
        scale = (torch.rand(n, generator=gen) / (100 * k**0.5)).to(device)
    b = torch.randn(n, generator=gen).to(device, dtype) if bias else None
    want = ref.w8_linear(x, w, scale, b)
    configs = W8_CONFIGS if ON_GPU else W8_CONFIGS[:1] + W8_CONFIGS[-1:]
    for config in configs:
        got = w8_linear(x, w, scale, b, config)
        assert got.shape == (m, n) and got.dtype == dtype
        assert_close(got, want, dtype, 2)
    if m == 1:
        for gemv in GEMV_CONFIGS if ON_GPU else GEMV_CONFIGS[-1:]:
            assert_close(w8_gemv(x, w, scale, b, gemv), want, dtype, 2)


@pytest.mark.parametrize("codebook", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("k", "n"), [(128, 24), (320, 7)] + ([(4096, 6144)] if ON_GPU else []))
def test_4bit_lookup_kernels(k: int, n: int, dtype: torch.dtype, codebook: str, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(9)
    code = torch.tensor(ref.CODEBOOKS_4BIT[codebook], device=device)
    packed, absmax = ref.quantize_4bit(torch.randn(n, k, generator=gen).to(device), code)
    want = ref.dequantize_4bit(packed, absmax, code)  # (N, K) float32
    assert torch.equal(dequantize_4bit(packed, absmax, code, torch.float32), want)
    assert_close(dequantize_4bit(packed, absmax, code, dtype), want, dtype)  # the interpreter rounds bfloat16 its own way
    x = torch.randn(1, k, generator=gen).to(device, dtype)
    b = torch.randn(n, generator=gen).to(device, dtype)
    assert_close(lut4_gemv(x, packed, absmax, code, b), torch.nn.functional.linear(x.float(), want, b.float()), dtype, 2)
