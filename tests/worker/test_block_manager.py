"""Block manager: ref counts, the LRU free queue, prefix-cache hits and eviction, no leaks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.sampling_params import SamplingParams
from worker.block_manager import BlockManager, NoFreeBlocks
from tests.worker.invariants import check_block_invariants
from worker.request import Request


def _req(rid: str, tokens: list[int]) -> Request:
    return Request(rid, list(tokens), SamplingParams(max_new_tokens=4), seed=0, arrival_time=0.0)


def _compute(bm: BlockManager, req: Request, num: int | None = None) -> None:
    """Allocate and 'compute' the next `num` tokens (all of them by default), as a step would."""
    num = req.num_tokens - req.num_computed_tokens if num is None else num
    bm.allocate(req, num)
    req.num_computed_tokens += num
    bm.commit(req)


def test_allocate_covers_tokens_and_free_returns_every_block() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    req = _req("a", list(range(10)))
    assert bm.blocks_needed(req, 10) == 3
    _compute(bm, req, 6)
    assert len(req.block_table) == 2 and bm.num_free_blocks == 6
    _compute(bm, req, 4)
    assert len(req.block_table) == 3 and all(bm.ref_counts[b] == 1 for b in req.block_table)
    bm.free(req)
    assert bm.num_free_blocks == 8 and req.block_table == [] and req.num_computed_tokens == 0
    check_block_invariants(bm)


def test_allocation_beyond_the_pool_raises_and_changes_nothing() -> None:
    bm = BlockManager(num_blocks=2, block_size=4)
    req = _req("a", list(range(12)))
    with pytest.raises(NoFreeBlocks):
        bm.allocate(req, 12)
    assert bm.num_free_blocks == 2 and req.block_table == []


def test_double_free_is_caught() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    req = _req("a", list(range(5)))
    _compute(bm, req)
    table = list(req.block_table)
    bm.free(req)
    req.block_table = table
    with pytest.raises(AssertionError):
        bm.free(req)


def test_prefix_hit_shares_full_blocks_and_leaves_one_token_to_compute() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    a = _req("a", list(range(1, 13)))  # exactly three full blocks
    _compute(bm, a)
    b = _req("b", list(range(1, 13)))  # identical prompt: the last block must still be computed
    assert bm.match_prefix(b) == 8
    assert b.block_table == a.block_table[:2] and b.num_computed_tokens == 8
    assert [bm.ref_counts[x] for x in a.block_table] == [2, 2, 1]
    c = _req("c", list(range(1, 9)) + [99, 98, 97, 96, 95])  # shares two blocks, then diverges
    assert bm.match_prefix(c) == 8
    d = _req("d", [1, 2, 3, 5, 6])  # differs inside the first block: no hit
    assert bm.match_prefix(d) == 0
    for r in (a, b, c, d):
        bm.free(r)
    assert bm.num_free_blocks == 16
    check_block_invariants(bm)


def test_hash_chain_distinguishes_equal_blocks_after_different_prefixes() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    _compute(bm, _req("a", [1, 1, 1, 1, 7, 7, 7, 7, 0]))
    other = _req("b", [2, 2, 2, 2, 7, 7, 7, 7, 0])  # second block equal, parent different
    assert bm.match_prefix(other) == 0


# Python hashes an int modulo this Mersenne prime, so t and t + _HASH_MODULUS hash alike, and so do
# any two tuples that differ only by such a pair: a collision of the very hash() a cache keyed by
# hash((parent, *tokens)) would use.
_HASH_MODULUS = 2**61 - 1


def test_blocks_whose_hashes_collide_are_not_served_for_each_other() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    a = _req("a", [5, 6, 7, 8, 9, 10, 11, 12, 0])
    _compute(bm, a)
    forged = [5 + _HASH_MODULUS, 6, 7, 8, 9, 10, 11, 12, 0]
    assert hash((0, *forged[:4])) == hash((0, *a.all_token_ids[:4]))  # a real collision
    b = _req("b", forged)
    assert bm.match_prefix(b) == 0 and not set(b.block_table) & set(a.block_table)
    # Cached beside a's blocks, b's do not displace them: a's prompt still finds a's own KV.
    _compute(bm, b)
    c = _req("c", [5, 6, 7, 8, 9, 10, 11, 12, 1])
    assert bm.match_prefix(c) == 8 and c.block_table == a.block_table[:2]
    for r in (a, b, c):
        bm.free(r)
    check_block_invariants(bm)


def test_freed_cached_blocks_stay_reusable_until_evicted_lru() -> None:
    bm = BlockManager(num_blocks=6, block_size=4)
    old = _req("old", [1] * 8 + [0])  # two full blocks and a partial one
    _compute(bm, old)
    bm.free(old)
    new = _req("new", [2] * 8 + [0])
    _compute(bm, new)  # takes the partial block first, then two never-used blocks
    bm.free(new)
    assert bm.match_prefix(probe := _req("p", [1] * 8 + [0])) == 8  # both prompts still cached
    bm.free(probe)
    assert bm.match_prefix(probe := _req("p", [2] * 8 + [0])) == 8
    bm.free(probe)
    # The free queue now holds, in order: new's partial, the unused block, then the cached blocks,
    # "old" before "new" (old's tail before its head). Three more blocks evict old's second one.
    filler = _req("filler", [3] * 12)
    _compute(bm, filler)
    assert bm.match_prefix(a := _req("a", [1] * 8 + [0])) == 4
    assert bm.match_prefix(b := _req("b", [2] * 8 + [0])) == 8
    for r in (filler, a, b):
        bm.free(r)
    assert bm.num_free_blocks == 6
    check_block_invariants(bm)


def test_prefix_caching_off_never_hits_and_counts_nothing() -> None:
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    _compute(bm, a := _req("a", list(range(9))))
    bm.free(a)
    assert bm.match_prefix(_req("b", list(range(9)))) == 0
    bm.record_lookup(9, 0)
    assert bm.prefix_query_tokens == 0 and bm.prefix_hit_tokens == 0


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 3), st.integers(1, 12)), max_size=60))
def test_random_operations_keep_ref_counts_consistent(ops: list[tuple[int, int, int]]) -> None:
    """Random admit/extend/free over a small pool with heavily shared prefixes: ref counts equal
    the number of live block tables holding each block, and nothing leaks."""
    bm = BlockManager(num_blocks=12, block_size=4)
    live: dict[int, Request] = {}
    for slot, family, length in ops:
        req = live.get(slot)
        if req is None:
            req = _req(f"r{slot}", [family] * 8 + list(range(length)))
            bm.match_prefix(req)
            try:
                _compute(bm, req)
            except NoFreeBlocks:
                bm.free(req)
                continue
            live[slot] = req
        elif length % 3 == 0:
            bm.free(live.pop(slot))
        else:
            req.all_token_ids.extend([length] * length)
            try:
                _compute(bm, req)
            except NoFreeBlocks:
                bm.free(live.pop(slot))
        check_block_invariants(bm)
        holders = [0] * bm.num_blocks
        for r in live.values():
            for block in r.block_table:
                holders[block] += 1
        assert holders == bm.ref_counts
    for r in live.values():
        bm.free(r)
    assert bm.num_free_blocks == 12 and not any(bm.ref_counts)
