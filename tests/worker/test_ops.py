"""worker/ops.py: every op it dispatches has a Triton launcher that imports by its name."""

from __future__ import annotations

import pytest

from worker import ops


@pytest.mark.parametrize("name", ops._NAMES)
def test_each_op_names_an_importable_triton_launcher(name: str) -> None:
    # A wrong module name would not fail on a GPU either: ops falls back to the torch reference
    # with a warning, so a kernel would silently never run.
    launcher = ops._launcher(name)
    assert callable(launcher) and launcher.__name__ == name
