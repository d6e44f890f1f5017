"""The per-step descriptor rank 0 sends each other rank of a sharded worker, over a pipe.

A pipe (the rank's stdin), not a collective: a rank waiting for the next step may wait as long
as the worker is idle (no timeout to outlive), and the pipe's end tells it at once that rank 0
is gone. One message per step, little-endian int64 throughout:

    op, placeholders, header[HEADER_LEN], then flat_length(header) int64s (PackedInputs.flat: the
    header's 7 part lengths, each part from an even index)

`op` is STEP or STOP (rank 0 is closing: the rank exits 0). `placeholders` is 1 when the step's
first decode tokens are still on rank 0's device (overlapped scheduling): the ranks then take
them from a broadcast of rank 0's `input_ids` (ShardGroup.share_placeholders).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

import torch

from worker.input_builder import HEADER_LEN, flat_length

__all__ = ["STEP", "STOP", "StepMessage", "write_step", "write_stop", "read_message"]

STEP = 1
STOP = 2
_HEAD = struct.Struct(f"<{2 + HEADER_LEN}q")


@dataclass(slots=True)
class StepMessage:
    header: tuple[int, ...]  # PackedInputs.header
    flat: torch.Tensor  # (flat_length(header),) int64 host
    placeholders: bool  # the first decode tokens come from rank 0's device


def write_step(out: BinaryIO, header: tuple[int, ...], flat: torch.Tensor, placeholders: bool) -> None:
    out.write(_HEAD.pack(STEP, int(placeholders), *header) + flat.numpy().tobytes())
    out.flush()


def write_stop(out: BinaryIO) -> None:
    out.write(_HEAD.pack(STOP, 0, *([0] * HEADER_LEN)))
    out.flush()


def read_message(src: BinaryIO) -> StepMessage | None:
    """The next step, or None when rank 0 stopped the rank (STOP) or is gone (end of the pipe)."""
    head = _read_exactly(src, _HEAD.size)
    if head is None:
        return None
    op, placeholders, *header = _HEAD.unpack(head)
    if op == STOP:
        return None
    if op != STEP:
        raise ValueError(f"unknown shard control op {op}")
    count = flat_length(header)
    body = _read_exactly(src, 8 * count)
    if body is None:
        return None
    flat = torch.frombuffer(bytearray(body), dtype=torch.int64) if count else torch.empty(0, dtype=torch.int64)
    return StepMessage(tuple(header), flat, bool(placeholders))


def _read_exactly(src: BinaryIO, size: int) -> bytes | None:
    chunks = []
    left = size
    while left:
        chunk = src.read(left)
        if not chunk:
            return None  # the writer is gone
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
