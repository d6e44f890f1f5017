from __future__ import annotations

import random

import torch

from common.sampling_params import SamplingParams
from worker.batch import ScheduledBatch, ScheduledRequest
from worker.input_builder import build_inputs, flat_length, pack_inputs
from worker.request import RequestKey


def _random_batch(rng: random.Random, block_size: int) -> ScheduledBatch:
    """Decodes (some verifying drafts) first, then prompt chunks at random offsets, some scored."""
    params = SamplingParams(max_new_tokens=4)
    reqs = []
    num_decode = rng.randrange(0, 6)
    for i in range(num_decode + rng.randrange(1, 5)):
        decode = i < num_decode
        drafts = rng.randrange(0, 3) if decode else 0
        n = 1 + drafts if decode else rng.randrange(1, 40)
        start = rng.randrange(0, 60)
        table = rng.sample(range(200), -(-(start + n) // block_size) + rng.randrange(0, 2))
        ids = [rng.randrange(5, 1000) for _ in range(n)]
        scored = not decode and rng.random() < 0.3
        reqs.append(ScheduledRequest(RequestKey(f"r{i}", 0), ids, start, table, decode or rng.random() < 0.5, params,
                                     all_token_ids=[rng.randrange(5, 1000) for _ in range(start + n + 1)],
                                     prefill_logprobs=scored, num_draft_tokens=drafts))
    return ScheduledBatch(1, reqs, num_decode, sum(len(r.token_ids) for r in reqs))


def test_pack_inputs_matches_the_per_token_layout() -> None:
    rng = random.Random(0)
    for _ in range(50):
        batch = _random_batch(rng, 4)
        x = build_inputs(batch, 4, torch.device("cpu"))
        reqs = batch.requests
        positions = [p for r in reqs for p in range(r.start_pos, r.start_pos + len(r.token_ids))]
        owner = [r for r in reqs for _ in r.token_ids]
        width = max([1] + [len(r.block_table) for r in reqs])
        assert x.input_ids.tolist() == [t for r in reqs for t in r.token_ids]
        assert x.positions.tolist() == positions
        assert x.slot_mapping.tolist() == [r.block_table[p // 4] * 4 + p % 4 for r, p in zip(owner, positions)]
        assert x.block_tables.tolist() == [r.block_table + [0] * (width - len(r.block_table)) for r in reqs]
        assert x.seq_lens.tolist() == [r.start_pos + len(r.token_ids) for r in reqs]
        starts = [0]
        for r in reqs:
            starts.append(starts[-1] + len(r.token_ids))
        assert x.query_start_loc.tolist() == starts
        assert x.logits_rows.tolist() == x.layout.rows
        assert x.max_query_len == max((len(r.token_ids) for r in reqs), default=0)
        assert x.decode_tokens == starts[batch.num_decode]


def test_pack_inputs_of_an_empty_batch() -> None:
    packed = pack_inputs(ScheduledBatch(0, [], 0, 0), 16)
    assert packed.flat.tolist() == [0] and packed.header[:7] == (0, 0, 0, 0, 0, 1, 0)


def test_every_int64_part_starts_16_bytes_into_the_buffer_whatever_the_token_count() -> None:
    # Triton specializes a kernel on each pointer's 16-byte alignment: an odd token count must not
    # leave the positions (the rotary kernel's input) off it.
    rng = random.Random(1)
    for _ in range(30):
        batch = _random_batch(rng, 4)
        packed = pack_inputs(batch, 4)
        x = build_inputs(batch, 4, torch.device("cpu"))
        assert packed.flat.shape[0] == flat_length(packed.header)
        for part in (x.input_ids, x.positions, x.slot_mapping, x.logits_rows):
            assert part.storage_offset() % 2 == 0 or part.numel() == 0, (part.storage_offset(), batch.num_tokens)
