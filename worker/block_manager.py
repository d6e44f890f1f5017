"""Integer bookkeeping of KV blocks: ref counts, a free queue in LRU order, and the prefix cache.

Prefix caching: a block that is full of computed tokens gets a hash chained over its tokens and
its parent's hash, so equal hashes mean equal prefixes. A new request reuses the cached blocks of
its longest cached prefix. Blocks whose ref count drops to zero stay in the cache (and keep their
hash) at the back of the free queue; allocation takes from the front, evicting the least recently
freed first. Never imports torch.
"""

from __future__ import annotations

from collections import OrderedDict

from worker.request import Request

__all__ = ["BlockManager", "NoFreeBlocks"]


class NoFreeBlocks(RuntimeError):
    pass


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        self._block_of_hash: dict[int, int] = {}
        # Free blocks, least recently freed first. Values unused: an ordered set.
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        # Per request: hashes of its full, committed blocks, in order.
        self._hashes: dict[str, list[int]] = {}
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_free_tokens(self) -> int:
        return len(self._free) * self.block_size

    def blocks_needed(self, req: Request, num_new_tokens: int) -> int:
        total = req.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(req.block_table))

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= len(self._free)

    def match_prefix(self, req: Request, reuse: bool = True) -> int:
        """On admission: take the cached blocks of the longest cached prefix of the request's tokens.

        Returns the number of tokens served from the cache. At least one token is always left to
        compute, since the forward pass that samples the next token needs one. The hit counters
        move only once the admission sticks (`record_lookup`), so a retried admission counts once.
        """
        assert not req.block_table and req.num_computed_tokens == 0
        self._hashes[req.req_id] = []
        if not (self.enable_prefix_caching and reuse):
            return 0
        tokens = req.all_token_ids
        usable = (len(tokens) - 1) // self.block_size
        parent = 0
        for i in range(usable):
            h = _chain(parent, tokens[i * self.block_size : (i + 1) * self.block_size])
            block = self._block_of_hash.get(h)
            if block is None:
                break
            self._take(block)
            req.block_table.append(block)
            self._hashes[req.req_id].append(h)
            parent = h
        hit = len(req.block_table) * self.block_size
        req.num_computed_tokens = hit
        return hit

    def record_lookup(self, num_query_tokens: int, num_hit_tokens: int) -> None:
        if self.enable_prefix_caching:
            self.prefix_query_tokens += num_query_tokens
            self.prefix_hit_tokens += num_hit_tokens

    def allocate(self, req: Request, num_new_tokens: int) -> None:
        need = self.blocks_needed(req, num_new_tokens)
        if need > len(self._free):
            raise NoFreeBlocks(f"{need} blocks needed, {len(self._free)} free")
        for _ in range(need):
            block, _ = self._free.popitem(last=False)
            old = self._hash_of[block]
            if old is not None:  # evict: this block's cached content is being overwritten
                if self._block_of_hash.get(old) == block:
                    del self._block_of_hash[old]
                self._hash_of[block] = None
            self.ref_counts[block] = 1
            req.block_table.append(block)

    def commit(self, req: Request) -> None:
        """Register the request's newly full, computed blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        hashes = self._hashes.setdefault(req.req_id, [])
        full = req.num_computed_tokens // self.block_size
        tokens = req.all_token_ids
        while len(hashes) < full:
            i = len(hashes)
            parent = hashes[-1] if hashes else 0
            h = _chain(parent, tokens[i * self.block_size : (i + 1) * self.block_size])
            hashes.append(h)
            block = req.block_table[i]
            if self._hash_of[block] is None and h not in self._block_of_hash:
                self._hash_of[block] = h
                self._block_of_hash[h] = block

    def free(self, req: Request) -> None:
        # Tail blocks first: they are the least likely to be shared, so they are evicted first.
        for block in reversed(req.block_table):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0, f"block {block} freed twice"
            if self.ref_counts[block] == 0:
                if self._hash_of[block] is None:
                    self._free[block] = None
                    self._free.move_to_end(block, last=False)  # unhashed: reuse first
                else:
                    self._free[block] = None
        req.block_table = []
        req.num_computed_tokens = 0
        self._hashes.pop(req.req_id, None)

    def _take(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self._free[block]
        self.ref_counts[block] += 1

    def check_invariants(self) -> None:
        """Debug aid for tests: every block is either referenced or free, never both."""
        for block, refs in enumerate(self.ref_counts):
            assert refs >= 0
            assert (refs == 0) == (block in self._free), f"block {block}: refs={refs}"
        for h, block in self._block_of_hash.items():
            assert self._hash_of[block] == h


def _chain(parent: int, tokens: list[int]) -> int:
    return hash((parent, *tokens))
