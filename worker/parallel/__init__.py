"""Tensor parallelism (`--num-shard N`): one worker over N devices of a host, N processes behind it.

To the fleet a sharded worker is one worker: rank 0 is the `genfleet worker` process, which alone
talks to Redis, schedules, samples and publishes. It starts ranks 1..N-1 (`launch.py`), and each
step sends them the step's packed inputs (`control.py`); every rank then runs the same forward on
its part of the model (`plan.py` says which part, `layers.py` adds the collectives), and the logits
are gathered to rank 0 (`group.py`). The engine, the block manager and the prefix cache exist on
rank 0 only: every rank's KV pool has the same number of blocks, holding its own heads.
"""

from __future__ import annotations

from worker.parallel.group import ShardGroup, ShardingError
from worker.parallel.layers import add_all_reduces, shard_model
from worker.parallel.plan import ShardPlan

__all__ = ["ShardGroup", "ShardingError", "ShardPlan", "shard_model", "add_all_reduces"]
