"""The CPU's default dtype: bfloat16 where the CPU has native bfloat16 dot products, else float32."""

from __future__ import annotations

from pathlib import Path

import torch

from worker.cpu_features import native_bf16
from worker.model_runner import resolve_dtype

_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {extra}\nbogomips\t: 5192\n"


def test_native_bf16_reads_the_cpu_flags(tmp_path: Path) -> None:
    for extra, native in (("avx512_bf16 avx512_vnni", True), ("amx_tile amx_bf16", True), ("avx512_vnni", False)):
        info = tmp_path / extra.replace(" ", "_")
        info.write_text(_FLAGS.format(extra=extra))
        assert native_bf16(info) is native
    assert native_bf16(tmp_path / "missing") is False


def test_auto_dtype_follows_the_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if native_bf16() else torch.float32)
    assert resolve_dtype("float32", cpu) == torch.float32
