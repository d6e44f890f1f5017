from __future__ import annotations

import random

import numpy as np

from common.sampling_params import SamplingParams
from worker.batch import ScheduledRequest
from worker.block_tables import BlockTables
from worker.request import RequestKey


def test_rows_kept_across_steps_follow_appends_new_lists_and_releases() -> None:
    rng = random.Random(0)
    params = SamplingParams(max_new_tokens=1)
    tables = BlockTables(rows=2, width=2)  # small: rows and width both grow
    live: dict[RequestKey, list[int]] = {}
    for step in range(300):
        released = []
        for key in list(live):
            roll = rng.random()
            if roll < 0.5:
                live[key].append(rng.randrange(1000))  # in place: only the new entry is copied
            elif roll < 0.6:
                live[key] = live[key][: rng.randrange(len(live[key]) + 1)]  # a trim: a new list
            elif roll < 0.65:
                del live[key]
                released.append(key)
        for _ in range(rng.randrange(3)):
            live[RequestKey(f"r{step}-{rng.random()}", 0)] = [rng.randrange(1000) for _ in range(rng.randrange(1, 9))]
        tables.release(released)
        batch = [ScheduledRequest(key, [1], 0, table, True, params) for key, table in live.items() if rng.random() < 0.8]
        width = max([1] + [len(r.block_table) for r in batch])
        out = np.full((len(batch), width), -7, dtype=np.int64)
        tables.gather(batch, width, out)
        assert out.tolist() == [r.block_table + [0] * (width - len(r.block_table)) for r in batch]
