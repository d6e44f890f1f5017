"""load/engine_host.py runs the real engine over a few decode steps and reports a positive cost."""

from __future__ import annotations

from load.engine_host import step_micros


def test_a_small_batch_decodes_and_is_timed() -> None:
    assert step_micros(batch=4, steps=3) > 0
