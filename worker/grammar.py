"""Grammar matchers for constrained requests: compiled off the engine thread, cached by grammar.

A request's SamplingParams.grammar is llguidance grammar text (gateway/grammar.py built and
checked it). `GrammarCompiler.start(grammar, replay)` returns a Future of the request's own
matcher: on a pool thread it compiles the grammar against the model's vocabulary (or copies the
pristine matcher cached under the grammar's hash: a fleet sees the same schema many times; with
nothing to replay that copy is made at once, and the Future is done), then feeds it the tokens
earlier attempts generated, so a continuation on another worker resumes in
the state the lost worker had reached. The engine advances the matcher with each sampled token;
worker/grammar_mask.py turns its state into the step's token mask.

The lexer's work is bounded (`PARSER_LIMITS`), and the first mask of a fresh grammar, where its
lexer states are built, is computed on the pool thread too: a pathological grammar (a regex such
as `a{1000000000}`) fails its own request in milliseconds there instead of stalling every
request's step for seconds on the engine thread.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import llguidance

__all__ = ["GrammarCompiler", "GrammarError"]

log = logging.getLogger("genfleet.worker.grammar")

# llguidance's defaults allow a 1,000,000-unit lexer build (2.5 s for `a{1000000000}` on a loaded
# 2-core machine); a tenth of that still compiles and masks a 60-property schema with `$defs`
# (load/grammar_bench.py) and bounds the worst grammar to ~0.1 s.
PARSER_LIMITS = llguidance.LLParserLimits(initial_lexer_fuel=100_000, step_lexer_fuel=50_000, max_lexer_states=20_000)


class GrammarError(ValueError):
    """A grammar the worker's vocabulary cannot serve, or generated tokens it does not accept."""


class GrammarCompiler:
    def __init__(self, tokenizer_json: Path, vocab_size: int, eos_token_ids: frozenset[int], *,
                 threads: int = 2, cache_size: int = 128) -> None:
        # ~0.3 s for a 49k vocabulary, once per worker.
        self.tokenizer = llguidance.LLTokenizer(
            str(tokenizer_json), n_vocab=vocab_size, eos_token=sorted(eos_token_ids) or None
        )
        self.vocab_size = vocab_size
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="grammar")
        self._cache: OrderedDict[bytes, llguidance.LLMatcher] = OrderedDict()  # hash -> never advanced
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def start(self, grammar: str, replay: list[int]) -> Future[llguidance.LLMatcher]:
        """A matcher for `grammar` that has consumed `replay` (the tokens already generated).

        A cached grammar with nothing to replay is copied here, on the caller's thread (a few µs),
        and its Future is already done: requests that arrive together start in the same step, not
        in waves as the pool threads finish their copies (a wave's first step then carries the
        others' prompts beside its decodes)."""
        if not replay:
            pristine = self._cached(_key(grammar))
            if pristine is not None:
                done: Future[llguidance.LLMatcher] = Future()
                done.set_result(pristine.deep_copy())
                return done
        return self._pool.submit(self.matcher, grammar, replay)

    def _cached(self, key: bytes) -> llguidance.LLMatcher | None:
        with self._lock:
            pristine = self._cache.get(key)
            if pristine is not None:
                self._cache.move_to_end(key)
        return pristine

    def matcher(self, grammar: str, replay: list[int]) -> llguidance.LLMatcher:
        key = _key(grammar)
        pristine = self._cached(key)
        if pristine is None:
            started = time.perf_counter()
            pristine = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0, limits=PARSER_LIMITS)
            if not pristine.is_error():
                pristine.compute_bitmask()  # builds the first lexer states here, off the engine thread
            if pristine.is_error():
                raise GrammarError(f"grammar is not valid: {pristine.get_error().splitlines()[0]}")
            log.debug("grammar compiled in %.2f ms", (time.perf_counter() - started) * 1e3)
            with self._lock:
                self._cache[key] = pristine
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        matcher = pristine.deep_copy()
        if replay and not matcher.consume_tokens(replay):
            raise GrammarError(f"the tokens generated so far do not match the grammar: {matcher.get_error()}")
        return matcher

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _key(grammar: str) -> bytes:
    return hashlib.blake2b(grammar.encode(), digest_size=16).digest()
