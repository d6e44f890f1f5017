"""CPU time spent in named functions of the engine and runner, for the host-cost tools.

A part is (label, module, attribute path): the function that module's `Class.method` or `function`
names, which the engine or runner calls through that name. While a `PartTimes` is entered, each part
is wrapped so its calls add their CPU time (`clock`) to `seconds[label]`; leaving puts the originals
back.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["PartTimes"]


class PartTimes:
    def __init__(self, parts: Sequence[tuple[str, str, str]], clock: Callable[[], float] = time.thread_time) -> None:
        self.parts = parts
        self.clock = clock
        self.seconds = dict.fromkeys((label for label, *_ in parts), 0.0)
        self._undo: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> PartTimes:
        for label, module, path in self.parts:
            *owners, name = path.split(".")
            owner: Any = importlib.import_module(module)
            for attr in owners:
                owner = getattr(owner, attr)
            fn = getattr(owner, name)
            self._undo.append((owner, name, fn))
            setattr(owner, name, self._timed(fn, label))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, fn in reversed(self._undo):
            setattr(owner, name, fn)
        self._undo.clear()

    def reset(self) -> None:
        self.seconds.update(dict.fromkeys(self.seconds, 0.0))

    def _timed(self, fn: Any, label: str) -> Any:
        seconds, clock = self.seconds, self.clock

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[label] += clock() - started
        return timed
