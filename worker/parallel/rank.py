"""Ranks 1..N-1 of a sharded worker: `python -m worker.parallel.rank RANK N INIT_URL <worker flags>`.

Started by rank 0 (worker/parallel/launch.py), never by hand. The rank builds its part of the
model and its KV pool exactly as rank 0 does (worker/model_runner.py with a ShardGroup), then runs
each step rank 0 sends on stdin: the same forward, its share of the collectives, its vocabulary
shard of the logits gathered to rank 0. It samples, schedules and publishes nothing, and exits when
rank 0 sends STOP or is gone.
"""

from __future__ import annotations

import logging
import sys

import torch

__all__ = ["main"]

log = logging.getLogger("genfleet.worker.parallel")


def main(argv: list[str]) -> int:
    from common.log import setup_logging
    from common.model_source import resolve_model
    from genfleet.cli import parse_configs
    from worker.input_builder import unpack_inputs, upload
    from worker.model_runner import ModelRunner, resolve_device
    from worker.parallel.control import read_message
    from worker.parallel.group import ShardGroup

    rank, world_size, init = int(argv[0]), int(argv[1]), argv[2]
    _, config = parse_configs(["worker", *argv[3:]])
    fleet = config.fleet
    setup_logging(fleet.json_output, fleet.log_level, f"worker-rank{rank}")
    group = ShardGroup(rank, world_size, init, resolve_device(config.device))
    model_dir = resolve_model(fleet.model_id, model_cache=fleet.model_cache, revision=fleet.revision)
    runner = ModelRunner(config, model_dir, load=not config.random_weights, shards=group)
    log.info("rank %d of %d ready on %s", rank, world_size, group.device)
    control = sys.stdin.buffer
    with torch.inference_mode():
        while (step := read_message(control)) is not None:
            inputs = unpack_inputs(upload(step.flat, group.device), step.header, None)
            if step.placeholders:
                group.share_placeholders(inputs.input_ids[: inputs.decode_tokens])
            runner.logits(inputs)
    log.info("rank %d stopping", rank)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
