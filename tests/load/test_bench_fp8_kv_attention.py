"""load/bench_fp8_kv_attention.py runs its three readings on the CPU (--tiny, Triton's interpreter)."""

from __future__ import annotations

import pytest

from load.bench_fp8_kv_attention import _lens, main

pytest.importorskip("triton")


def test_a_spread_context_covers_its_range() -> None:
    assert _lens("129-384", 3) == [129, 256, 384]
    assert _lens("256", 2) == [256, 256]


def test_tiny_run_prints_every_reading(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU the tiny run is the card's; see the module's docstring")
    assert main(["--tiny", "--repeats", "1", "--fp8-launch", "1/32/4/2"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 40 ") or line.startswith("| 20-70 ")]
    assert len(rows) == 6, out  # a row per context in each table (the extra launch, and the default)
    # The FP8 readings agree with the float32 reference over the same pages.
    for row in rows[:2]:
        cast, words = (float(v) for v in row.split("|")[-2].split("/"))
        assert cast < 1e-2 and words < 1e-2, row
