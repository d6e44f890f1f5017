"""Grammar matchers for constrained requests: compiled off the engine thread, cached by grammar.

A request's SamplingParams.grammar is llguidance grammar text (gateway/grammar.py built and
checked it). `GrammarCompiler.start(grammar, replay)` returns a Future of the request's own
matcher: on a pool thread it compiles the grammar against the model's vocabulary (or copies the
pristine matcher cached under the grammar's hash: a fleet sees the same schema many times), then
feeds it the tokens earlier attempts generated, so a continuation on another worker resumes in
the state the lost worker had reached. The engine advances the matcher with each sampled token;
worker/grammar_mask.py turns its state into the step's token mask.
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
        """A matcher for `grammar` that has consumed `replay` (the tokens already generated)."""
        return self._pool.submit(self.matcher, grammar, replay)

    def matcher(self, grammar: str, replay: list[int]) -> llguidance.LLMatcher:
        key = hashlib.blake2b(grammar.encode(), digest_size=16).digest()
        with self._lock:
            pristine = self._cache.get(key)
            if pristine is not None:
                self._cache.move_to_end(key)
        if pristine is None:
            started = time.perf_counter()
            pristine = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
            if pristine.is_error():
                raise GrammarError(f"grammar is not valid: {pristine.get_error()}")
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
