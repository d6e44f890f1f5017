"""load/bench_online.py end to end: `genfleet serve` started, swept at two Poisson rates, reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from load.bench_online import main


@pytest.mark.timeout(240)
def test_a_sweep_of_two_rates_writes_the_table_and_the_plots_against_load(
    default_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The model-free engine stands in for the forward (so the test is about the sweep, not the
    # model); everything else is the real fleet: Redis, gateway, worker, SSE.
    out = tmp_path / "online"
    code = main(["--model-dir", str(default_model_dir), "--rates", "20,40", "--num-requests", "6",
                 "--duration", "5", "--max-new-tokens", "6", "--out", str(out), "--synthetic-tokens-per-s", "200"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| rate-20 | 6/6 |" in printed and "| rate-40 | 6/6 |" in printed
    for name in ("summary.md", "rate-20.json", "rate-40.json", "latency_vs_load.png", "ttft_vs_load.png"):
        assert (out / name).is_file(), name


def test_rates_must_be_positive(default_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--model-dir", str(default_model_dir), "--rates", "4,0", "--out", str(tmp_path)])
    assert exc.value.code == 2
