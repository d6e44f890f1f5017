"""load/guided_overlap.py drives the real engine and masks over a simulated device, every row to its end."""

from __future__ import annotations

import pytest

from load.guided_overlap import main


def test_every_row_runs_a_few_steps_and_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--batch", "4", "--steps", "3", "--forward-ms", "1", "--vocab", "49152"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| free", "| half", "| all"))]
    assert len(rows) == 6, rows
