"""Integer bookkeeping of KV blocks: ref counts, a free queue in LRU order, and the prefix cache.

Prefix caching: a block that is full of computed tokens is cached under the key (parent id,
*its tokens), where the parent id names the exact content of the block before it (ids come from
a counter and are never reused). The dict compares keys by value on every hit, so equal keys mean
equal prefixes: a hash collision costs a lookup, never another prompt's KV. A new request reuses
the cached blocks of its longest cached prefix. The first block's parent is the request's LoRA
adapter's root id (0 for the base model), so KV computed under one adapter is never reused for
another or for the base. Blocks whose ref count drops to zero stay in the cache (and keep their
hash) at the back of the free queue; allocation takes from the front, evicting the least recently
freed first. Never imports torch.

Sliding windows: when every layer of the model attends over at most `window` keys, a request's
blocks that lie wholly before the window of its next query hold no key any layer reads again;
`release_behind_window` gives them back, so a long generation holds about window + one step of
KV, not its whole length. The request's block table keeps its length (positions still index it),
and its first `num_released_blocks` entries are stale ids the attention kernels never read. With
prefix caching, only committed blocks go: they stay cached (their content is exact), and an
uncommitted block given back would break the chain of content ids that later blocks hash under.

A prefix hit under a window needs only the blocks the next query reads: those inside the window
of the first uncomputed position. The earlier ones may be gone (given back, then evicted), so
the content ids of evicted blocks are remembered, exactly as keys, for as many blocks as the
pool holds (`_ghosts`, oldest dropped first): the chain is followed across them, and a hit of n
blocks takes the held ones inside n's window, the entries before standing in the request's
table as released ones. Content computed again into a fresh block gets its remembered id back,
so the cached blocks chained after it are found again.
"""

from __future__ import annotations

from collections import OrderedDict

from worker.request import Request

__all__ = ["BlockManager", "NoFreeBlocks"]

# A cached block's key: (id of the parent block's content, or 0 at the start, *the block's tokens).
_Key = tuple[int, ...]


class NoFreeBlocks(RuntimeError):
    pass


class BlockManager:
    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, window: int = 0
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.window = window  # > 0: every layer reads only its last `window` keys (ModelConfig.kv_window)
        self.ref_counts = [0] * num_blocks
        self._key_of: list[_Key | None] = [None] * num_blocks  # the content a free block still holds
        self._cached: dict[_Key, tuple[int, int]] = {}  # key -> (block holding it, content id)
        # Under a window: key -> content id of content no block holds any more, oldest first.
        self._ghosts: OrderedDict[_Key, int] = OrderedDict()
        self._max_ghosts = num_blocks if window else 0
        self._next_id = 1
        self._adapter_roots: dict[str, int] = {}  # adapter id -> the content id its prefixes chain from
        # Free blocks, least recently freed first. Values unused: an ordered set.
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
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

    def tokens_held(self, num_tokens: int, chunk: int) -> int:
        """The most KV tokens a request of `num_tokens` holds at once when a step computes at most
        `chunk` of them: all of them, or under a window the window and about two steps (a block
        is given back once committed, which overlapped steps do one step late)."""
        if not self.window:
            return num_tokens
        return min(num_tokens, self.window + 2 * (chunk + self.block_size))

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= len(self._free)

    def match_prefix(self, req: Request, reuse: bool = True) -> int:
        """On admission: take the cached blocks of the longest cached prefix of the request's tokens
        (under a window, those of its blocks that the next query reads).

        Returns the number of tokens served from the cache. At least one token is always left to
        compute, since the forward pass that samples the next token needs one. The hit counters
        move only once the admission sticks (`record_lookup`), so a retried admission counts once.
        """
        assert not req.block_table and req.num_computed_tokens == 0
        ids: list[int] = []
        req.block_content_ids = ids
        if not (self.enable_prefix_caching and reuse):
            return 0
        tokens, size = req.all_token_ids, self.block_size
        parent = self._root(req.adapter_id)
        held: list[int | None] = []  # per block of the known chain: the block holding it, None if evicted
        for i in range((len(tokens) - 1) // size):
            key = (parent, *tokens[i * size : (i + 1) * size])
            entry = self._cached.get(key)
            parent = entry[1] if entry is not None else self._ghosts.get(key, 0)
            if not parent:
                break
            held.append(entry[0] if entry is not None else None)
            ids.append(parent)
        n = len(held)
        while n and None in held[self._first_read(n) : n]:  # the next query would read a block that is gone
            n = max(i for i in range(self._first_read(n), n) if held[i] is None)
        del ids[n:]
        first = self._first_read(n)
        req.block_table = [0] * first  # released entries: never read
        req.num_released_blocks = first
        for block in held[first:n]:
            assert block is not None
            self._take(block)
            req.block_table.append(block)
        hit = n * self.block_size
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
            old = self._key_of[block]
            if old is not None:  # evict: this block's cached content is being overwritten
                self._remember(old, self._cached.pop(old)[1])
                self._key_of[block] = None
            self.ref_counts[block] = 1
            req.block_table.append(block)

    def commit(self, req: Request) -> None:
        """Register the request's newly full, computed blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        ids = req.block_content_ids
        size = self.block_size
        full = req.num_computed_tokens // size
        tokens = req.all_token_ids
        while len(ids) < full:
            i = len(ids)
            key = (ids[-1] if ids else self._root(req.adapter_id), *tokens[i * size : (i + 1) * size])
            block = req.block_table[i]
            if self._key_of[block] is not None:  # holds other cached content: never overwrite it
                entry = self._cached.get(key)
                content_id = entry[1] if entry is not None else self._ghosts.pop(key, 0) or self._new_id()
                if entry is None:
                    self._remember(key, content_id)
                ids.append(content_id)
                continue
            # One lookup registers the block, or finds the same content cached in another block.
            entry = self._cached.setdefault(key, (block, self._ghosts.get(key, self._next_id)))
            if entry[0] == block:
                self._key_of[block] = key
                if self._ghosts.pop(key, None) is None:
                    self._next_id += 1
            ids.append(entry[1])

    def release_behind_window(self, req: Request) -> None:
        """Give back the blocks that no query from the request's next position on reads: those
        wholly before position - window + 1 (committed ones only, with prefix caching)."""
        if not self.window:
            return
        end = max(0, req.num_computed_tokens - self.window + 1) // self.block_size
        if self.enable_prefix_caching:
            end = min(end, len(req.block_content_ids))
        for i in range(req.num_released_blocks, end):
            self._unref(req.block_table[i])
        req.num_released_blocks = max(req.num_released_blocks, end)

    def trim(self, req: Request) -> None:
        """Give back the blocks past those that the request's known tokens need (speculative
        decoding: the ones only rejected drafts were written to). Such blocks were never
        committed, so they hold no cached content and go to the front of the free queue."""
        keep = -(-req.num_tokens // self.block_size)
        table = req.block_table
        if len(table) <= keep:
            return
        req.block_table = table[:keep]  # a new list: tables change in place only by appends (Request)
        for block in reversed(table[keep:]):
            assert self._key_of[block] is None and self.ref_counts[block] == 1, f"block {block} is shared"
            self.ref_counts[block] = 0
            self._free[block] = None
            self._free.move_to_end(block, last=False)

    def free(self, req: Request) -> None:
        # Tail blocks first: they are the least likely to be shared, so they are evicted first.
        for block in reversed(req.block_table[req.num_released_blocks :]):
            self._unref(block)
        req.block_table = []
        req.num_released_blocks = 0
        req.num_computed_tokens = 0
        req.block_content_ids = []

    def forget_adapter(self, adapter_id: str) -> None:
        """An adapter unloaded: prefixes cached under it are never hit again (a reload under the same
        id may bring other weights); their blocks age out of the free queue as usual."""
        self._adapter_roots.pop(adapter_id, None)

    def _root(self, adapter_id: str) -> int:
        if not adapter_id:
            return 0
        root = self._adapter_roots.get(adapter_id)
        if root is None:
            root = self._adapter_roots[adapter_id] = self._new_id()
        return root

    def _unref(self, block: int) -> None:
        self.ref_counts[block] -= 1
        assert self.ref_counts[block] >= 0, f"block {block} freed twice"
        if self.ref_counts[block] == 0:
            self._free[block] = None
            if self._key_of[block] is None:
                self._free.move_to_end(block, last=False)  # not cached: reuse first

    def _first_read(self, num_blocks: int) -> int:
        """The first block that a query at position num_blocks * block_size reads (as in
        `release_behind_window`)."""
        if not self.window:
            return 0
        return max(0, num_blocks * self.block_size - self.window + 1) // self.block_size

    def _remember(self, key: _Key, content_id: int) -> None:
        """Content that no block holds keeps its id (under a window), for the newest _max_ghosts keys."""
        if not self._max_ghosts:
            return
        self._ghosts[key] = content_id
        self._ghosts.move_to_end(key)
        if len(self._ghosts) > self._max_ghosts:
            self._ghosts.popitem(last=False)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _take(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self._free[block]
        self.ref_counts[block] += 1
