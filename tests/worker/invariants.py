"""Invariants of the block manager's bookkeeping, checked by the block manager and scheduler tests."""

from __future__ import annotations

from worker.block_manager import BlockManager

__all__ = ["check_block_invariants"]


def check_block_invariants(bm: BlockManager) -> None:
    """Every block is either referenced or free, never both; the cache maps keys to their blocks."""
    for block, refs in enumerate(bm.ref_counts):
        assert refs >= 0
        assert (refs == 0) == (block in bm._free), f"block {block}: refs={refs}"
    for key, (block, _) in bm._cached.items():
        assert bm._key_of[block] == key
    # Remembered ids of evicted content: bounded by the pool, never for content a block still holds.
    assert len(bm._ghosts) <= bm._max_ghosts
    assert not bm._ghosts.keys() & bm._cached.keys()
