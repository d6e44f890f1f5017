"""The block tables of the requests a runner serves, kept on the host across steps, a row each.

A step's (B, max_blocks) table tensor was built from every request's whole list each step: at 256
running requests of ~1k tokens that is ~18k Python ints converted per step, for a few new blocks.
Here each request keeps a row of one numpy array, and a step copies only the entries appended to
its list since the last step, then gathers the step's rows in one indexing. It relies on
Request.block_table's rule: a list changes in place only by appends; a trim or a free puts a new
list there, which is seen by identity and copied whole.
"""

from __future__ import annotations

import numpy as np

from worker.batch import ScheduledRequest
from worker.request import RequestKey

__all__ = ["BlockTables"]


class BlockTables:
    def __init__(self, rows: int = 16, width: int = 16) -> None:
        self._array = np.zeros((rows, width), dtype=np.int64)  # (rows, width): row r is one request's table
        # key -> [its row, the list the row copies, how many of its entries are copied]
        self._held: dict[RequestKey, list] = {}
        self._free_rows = list(range(rows - 1, -1, -1))

    def release(self, keys: list[RequestKey]) -> None:
        """The requests' blocks were freed (ScheduledBatch.released_keys): their rows go back."""
        for key in keys:
            held = self._held.pop(key, None)
            if held is not None:
                self._free_rows.append(held[0])

    def gather(self, reqs: list[ScheduledRequest], width: int, out: np.ndarray) -> None:
        """Write the requests' tables into `out` (B, width), zero-padded."""
        if width > self._array.shape[1]:
            self._grow(self._array.shape[0], max(width, 2 * self._array.shape[1]))
        held_by_key, array = self._held, self._array
        rows = []
        for req in reqs:
            table = req.block_table
            held = held_by_key.get(req.key)
            if held is None:
                held = held_by_key[req.key] = [self._take_row(), table, 0]
                array = self._array  # _take_row may have grown it
                array[held[0]] = 0
            elif held[1] is not table or len(table) < held[2]:  # a new list: copied whole
                array[held[0]] = 0
                held[1], held[2] = table, 0
            copied = held[2]
            if len(table) > copied:
                array[held[0], copied : len(table)] = table[copied:]
                held[2] = len(table)
            rows.append(held[0])
        out[:] = array[np.fromiter(rows, np.int64, len(rows)), :width]

    def _take_row(self) -> int:
        if not self._free_rows:
            rows = self._array.shape[0]
            self._grow(2 * rows, self._array.shape[1])
            self._free_rows = list(range(2 * rows - 1, rows - 1, -1))
        return self._free_rows.pop()

    def _grow(self, rows: int, width: int) -> None:
        grown = np.zeros((rows, width), dtype=np.int64)
        grown[: self._array.shape[0], : self._array.shape[1]] = self._array
        self._array = grown
