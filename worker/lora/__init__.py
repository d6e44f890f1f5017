"""LoRA adapters: PEFT checkpoints and `--lora-adapters` (`peft.py`), the table of the adapters a
worker serves with their weights stacked per linear (`table.py`), the linear that applies them
row by row (`layer.py`), and the worker loop's side: announcing, admitting, loading and unloading
(`control.py`). Import from the modules: the worker loop's (`control.py`, `peft.py`) load no torch.
"""

from __future__ import annotations

__all__: list[str] = []
