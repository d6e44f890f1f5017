"""Sliding windows: the blocks behind every layer's window go back to the pool, and nothing reads them.

The engine tests drive a fake runner that keeps a real page store: each step writes its tokens
into the slots its block table names and then reads back every key each query's window covers,
so a block given back while still inside a window (and rewritten by another request) shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from tests.fakes import FakeRunner, solo_run
from tests.worker.invariants import check_block_invariants
from worker.batch import ScheduledBatch, StepOutput
from worker.block_manager import BlockManager
from worker.engine import LLMEngine
from worker.request import Request, RequestKey

WINDOW = 8
BLOCK = 4


def _req(rid: str, tokens: list[int], max_new: int = 4) -> Request:
    return Request(rid, list(tokens), SamplingParams(max_new_tokens=max_new), seed=0, arrival_time=time.time())


def _step(bm: BlockManager, req: Request, num: int) -> None:
    """One scheduled step of `num` tokens, as the scheduler and engine run it."""
    bm.release_behind_window(req)
    bm.allocate(req, num)
    req.num_computed_tokens += num
    bm.commit(req)


def _held(req: Request) -> list[int]:
    return req.block_table[req.num_released_blocks :]


@pytest.mark.parametrize("prefix", [True, False])
def test_blocks_wholly_before_the_window_go_back(prefix: bool) -> None:
    bm = BlockManager(num_blocks=16, block_size=BLOCK, enable_prefix_caching=prefix, window=WINDOW)
    req = _req("a", list(range(1, 21)))
    _step(bm, req, 20)  # positions 0..19 computed; the next query (20) sees keys 13..20
    bm.release_behind_window(req)
    assert req.num_released_blocks == 3  # blocks 0..2 hold positions 0..11, all behind the window
    assert bm.num_free_blocks == 16 - 2 and all(bm.ref_counts[b] == 0 for b in req.block_table[:3])
    assert len(req.block_table) == 5  # positions still index the table
    bm.release_behind_window(req)  # idempotent
    assert bm.num_free_blocks == 14
    check_block_invariants(bm)
    bm.free(req)  # what is still held, once
    assert bm.num_free_blocks == 16 and req.num_released_blocks == 0
    check_block_invariants(bm)


def test_no_window_releases_nothing() -> None:
    bm = BlockManager(num_blocks=16, block_size=BLOCK)
    req = _req("a", list(range(1, 41)))
    _step(bm, req, 40)
    bm.release_behind_window(req)
    assert req.num_released_blocks == 0 and bm.num_free_blocks == 6


def test_with_prefix_caching_only_committed_blocks_go_and_they_stay_cached() -> None:
    bm = BlockManager(num_blocks=32, block_size=BLOCK, window=WINDOW)
    prompt = list(range(1, 41))
    a = _req("a", prompt)
    bm.allocate(a, 40)
    a.num_computed_tokens = 40  # computed, not committed yet (an overlapped step's outputs unread)
    bm.release_behind_window(a)
    assert a.num_released_blocks == 0, "an uncommitted block given back would break the prefix chain"
    bm.commit(a)
    bm.release_behind_window(a)
    assert a.num_released_blocks == 8  # positions 0..31: behind the next query's window (33..40)
    # The same prompt again: the blocks given back are still cached and serve its prefix.
    b = _req("b", prompt)
    assert bm.match_prefix(b) == 36
    bm.release_behind_window(b)  # its next query (36) reads keys 29..36 only
    assert b.num_released_blocks == 7 and _held(b) == a.block_table[7:9]
    check_block_invariants(bm)
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 32
    check_block_invariants(bm)


def _evicted_prefix(num_blocks: int, filler_blocks: int) -> tuple[BlockManager, Request, list[int]]:
    """A 40-token prompt computed, committed and freed (its first 8 blocks given back behind the
    window first), then a filler request that takes `filler_blocks` from the free queue: the
    never-used blocks, then the prompt's blocks in the order they went back (block 0 first)."""
    bm = BlockManager(num_blocks=num_blocks, block_size=BLOCK, window=WINDOW)
    prompt = list(range(1, 41))
    a = _req("a", prompt)
    _step(bm, a, 40)
    bm.release_behind_window(a)
    assert a.num_released_blocks == 8
    table = list(a.block_table)
    bm.free(a)
    filler = _req("filler", [500 + i for i in range(filler_blocks * BLOCK)])
    bm.allocate(filler, filler_blocks * BLOCK)
    return bm, filler, table


def test_a_hit_needs_only_the_blocks_inside_the_next_querys_window() -> None:
    bm, _, table = _evicted_prefix(16, 9)  # the prompt's blocks 0..2 evicted
    assert all(bm._key_of[b] is None or bm._key_of[b][1] >= 500 for b in table[:3])
    b = _req("b", list(range(1, 41)) + [99])
    assert bm.match_prefix(b) == 40  # the next query (40) reads keys 33..40: blocks 8 and 9
    assert b.num_released_blocks == 8 and _held(b) == table[8:10] and len(b.block_table) == 10
    assert len(b.block_content_ids) == 10
    check_block_invariants(bm)
    bm.allocate(b, 1)
    b.num_computed_tokens += 1
    bm.commit(b)  # chains on from the ids of blocks it does not hold
    assert len(b.block_content_ids) == 10
    bm.free(b)
    check_block_invariants(bm)


def test_a_hit_stops_before_a_gone_block_inside_its_window() -> None:
    bm, _, table = _evicted_prefix(16, 15)  # blocks 0..8 evicted: every window of the prompt meets one
    assert bm.match_prefix(_req("b", list(range(1, 41)) + [99])) == 0
    bm2, _, _ = _evicted_prefix(16, 9)
    assert bm2.match_prefix(_req("c", list(range(1, 14)))) == 0  # 3 blocks' chain, all 3 gone


def test_content_computed_again_gets_its_id_back_and_the_blocks_after_it_hit() -> None:
    bm, filler, table = _evicted_prefix(24, 17)  # 14 never used, then blocks 0..2 evicted
    bm.free(filler)
    b = _req("b", list(range(1, 13)) + [99])  # blocks 0..2 of the prompt: all gone, computed again
    assert bm.match_prefix(b) == 0
    _step(bm, b, 13)
    c = _req("c", list(range(1, 18)))  # the next query (16) reads blocks 2 and 3: b's block 2, a's block 3
    assert bm.match_prefix(c) == 16
    assert c.num_released_blocks == 2 and _held(c) == [b.block_table[2], table[3]]
    check_block_invariants(bm)


def test_remembered_ids_stay_bounded_by_the_pool() -> None:
    bm = BlockManager(num_blocks=8, block_size=BLOCK, window=WINDOW)
    for i in range(30):  # 30 distinct prompts through 8 blocks: most content is evicted
        req = _req(f"r{i}", [1000 * i + j for j in range(1, 17)])
        _step(bm, req, 16)
        bm.free(req)
        check_block_invariants(bm)
    assert len(bm._ghosts) == 8


def test_without_a_window_a_hit_holds_every_block_from_the_first() -> None:
    bm = BlockManager(num_blocks=16, block_size=BLOCK)
    a = _req("a", list(range(1, 41)))
    _step(bm, a, 40)
    table = list(a.block_table)
    bm.free(a)
    bm.allocate(_req("filler", list(range(500, 528))), 28)  # 6 never used, then a's block 9 (freed tail first)
    b = _req("b", list(range(1, 41)) + [99])
    assert bm.match_prefix(b) == 36 and b.block_table == table[:9] and b.num_released_blocks == 0
    assert not bm._ghosts


def test_a_request_holds_its_window_and_about_two_steps_not_its_length() -> None:
    bm = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=False, window=WINDOW)
    req = _req("a", [7] * 10)
    _step(bm, req, 10)
    most = 0
    for _ in range(300):  # a generation 30 times the pool would need without the window
        req.all_token_ids.append(3)
        _step(bm, req, 1)
        most = max(most, len(_held(req)))
        check_block_invariants(bm)
    assert len(req.block_table) == -(-310 // BLOCK) and most <= -(-WINDOW // BLOCK) + 1
    assert bm.tokens_held(310, 1) < 310 and BlockManager(8, BLOCK).tokens_held(310, 1) == 310


@dataclass
class PagedFakeRunner(FakeRunner):
    """FakeRunner over a page store: writes each step's tokens to their slots, then checks that every
    key inside each query's window reads back the request's own token at that position."""

    window: int = WINDOW
    pages: dict[int, int] = field(default_factory=dict)  # slot -> the token whose K/V it holds
    most_blocks: int = 0  # the most blocks any request's window-relevant part spanned

    def forward(self, batch: ScheduledBatch, ahead: frozenset[RequestKey] | set[RequestKey] = frozenset()) -> StepOutput:
        for req in batch.requests:
            table, size = req.block_table, self.block_size
            history = [*req.all_token_ids[: req.start_pos], *req.token_ids]
            end = req.start_pos + len(req.token_ids) - req.num_draft_tokens
            for pos in range(req.start_pos, req.start_pos + len(req.token_ids)):
                self.pages[table[pos // size] * size + pos % size] = history[pos]
            for query in range(req.start_pos, end):
                for key in range(max(0, query - self.window + 1), query + 1):
                    slot = table[key // size] * size + key % size
                    assert self.pages[slot] == history[key], (req.key, query, key)
            lo = max(0, req.start_pos - self.window + 1) // size
            self.most_blocks = max(self.most_blocks, -(-(req.start_pos + len(req.token_ids)) // size) - lo)
        return super().forward(batch, ahead)


def _engine(num_blocks: int, prefix: bool, overlap: bool, budget: int = 16) -> tuple[LLMEngine, PagedFakeRunner]:
    config = WorkerConfig(block_size=BLOCK, max_batch_prefill_tokens=budget, max_batch_size=8,
                          prefix_caching=prefix, waiting_served_ratio=0.0)
    runner = PagedFakeRunner(BLOCK, budget, can_overlap=overlap)
    engine = LLMEngine(config, runner, num_blocks=num_blocks, eos_token_ids=frozenset({0}), max_model_len=4096,
                       kv_window=WINDOW)
    return engine, runner


def _drain(engine: LLMEngine, out: dict[str, list[int]], limit: int = 5_000) -> None:
    for _ in range(limit):
        if not engine.has_unfinished_requests():
            return
        for o in engine.step():
            out.setdefault(o.key, []).extend(o.new_token_ids)
        check_block_invariants(engine.blocks)
    raise AssertionError("the engine did not finish")


@pytest.mark.parametrize("overlap", [False, True], ids=["one-step", "overlapped"])
@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-cache", "no-prefix-cache"])
def test_a_generation_longer_than_the_pool_runs_in_its_window(prefix: bool, overlap: bool) -> None:
    # 14 blocks of 4 = 56 KV tokens for a 30-token prompt that generates 120 more.
    engine, runner = _engine(num_blocks=14, prefix=prefix, overlap=overlap)
    prompt = list(range(100, 130))
    engine.add_request(_req("long", prompt, 120))
    out: dict[str, list[int]] = {}
    _drain(engine, out)
    assert out["long"] == solo_run(prompt, 120)
    assert engine.blocks.num_free_blocks == 14
    assert engine.scheduler.num_preemptions == 0
    assert runner.most_blocks <= -(-(WINDOW + 16) // BLOCK) + 1


@pytest.mark.parametrize("overlap", [False, True], ids=["one-step", "overlapped"])
def test_preempted_requests_resume_inside_their_windows(overlap: bool) -> None:
    # Five long generations over 12 blocks: preempted, recomputed from their first token (the
    # prefix cache serving what is still cached), each reading only its own keys.
    engine, runner = _engine(num_blocks=12, prefix=True, overlap=overlap)
    prompts = {f"r{i}": [10 * i + j for j in range(1, 14)] for i in range(5)}
    for rid, prompt in prompts.items():
        engine.add_request(_req(rid, prompt, 60))
    out: dict[str, list[int]] = {}
    _drain(engine, out)
    assert engine.scheduler.num_preemptions > 0
    for rid, prompt in prompts.items():
        assert out[rid] == solo_run(prompt, 60), rid
    assert engine.blocks.num_free_blocks == 12


def test_shared_prompts_hit_the_cache_after_their_blocks_went_back() -> None:
    engine, runner = _engine(num_blocks=40, prefix=True, overlap=False)
    prompt = list(range(200, 240))
    engine.add_request(_req("first", prompt, 20))
    out: dict[str, list[int]] = {}
    _drain(engine, out)
    engine.add_request(_req("second", prompt, 20))
    second = [r for r in engine.scheduler.waiting]
    _drain(engine, out)
    assert second[0].num_cached_tokens == 36  # every full prompt block but the last token's
    assert out["first"] == out["second"] == solo_run(prompt, 20)
    assert engine.blocks.num_free_blocks == 40


def test_a_request_longer_than_the_pool_is_refused_without_a_window() -> None:
    config = WorkerConfig(block_size=BLOCK, max_batch_prefill_tokens=16, waiting_served_ratio=0.0)
    engine = LLMEngine(config, FakeRunner(BLOCK, 16), num_blocks=10, eos_token_ids=frozenset({0}), max_model_len=4096)
    with pytest.raises(ValueError, match="needs 150 KV tokens; this worker holds 40"):
        engine.add_request(_req("long", list(range(100, 130)), 120))
