"""worker/ops.py: every op it dispatches has a Triton launcher that imports by its name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker import ops


@pytest.mark.parametrize("name", ops._NAMES)
def test_each_op_names_an_importable_triton_launcher(name: str) -> None:
    # A wrong module name would not fail on a GPU either: ops falls back to the torch reference
    # with a warning, so a kernel would silently never run.
    launcher = ops._launcher(name)
    assert callable(launcher) and launcher.__name__ == name


def test_the_worker_stack_imports_and_picks_cpu_ops_without_triton() -> None:
    # The CPU worker image installs no Triton: nothing on the worker's path may import it at start.
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, genfleet.cli, worker.worker, worker.parallel, worker.model_runner, worker.engine\n"
            "from worker import ops\n"
            "chosen = ops.use_device(torch.device('cpu'))\n"
            "assert chosen['programmatic dependent launch'] == 'off', chosen\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
