"""Constrained requests under overlapped scheduling: step N+1 is launched before N is read, and
sampled (its masks filled) only once N's tokens are in the matchers. With a fake runner whose
constrained rows follow their matcher at sampling time (tests/fakes.py), and with the real
default model on the CPU runner, the text is the same as one step at a time."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from gateway.grammar import GrammarSpec, compile_grammar
from tests.fakes import FakeRunner
from tests.integration.test_grammar_e2e import REGEXES, SCHEMAS
from worker.engine import LLMEngine
from worker.grammar import GrammarCompiler
from worker.model_runner import ModelRunner
from worker.request import Request, RequestKey

EOS = 2  # the default model's, and its tokenizer's as llguidance sees it
GRAMMARS = {
    **{name: compile_grammar(GrammarSpec.json_schema(SCHEMAS[name])) for name in ("nested", "defs-ref", "anyof", "array-enum")},
    **{name: compile_grammar(GrammarSpec("regex", REGEXES[name])) for name in ("phone", "answer")},
}


@pytest.fixture(scope="module")
def compiler(default_model_dir: Path) -> GrammarCompiler:
    return GrammarCompiler(default_model_dir / "tokenizer.json", 49152, frozenset({EOS}))


def _requests(prompts: list[list[int]], max_new: int, names: tuple[str, ...] = tuple(GRAMMARS)) -> list[Request]:
    """One request per grammar, and an unconstrained one after each two: a mixed batch."""
    reqs = []
    for k, name in enumerate(names):
        prompt = prompts[k % len(prompts)]
        params = SamplingParams(max_new_tokens=max_new, grammar=GRAMMARS[name])
        reqs.append(Request(RequestKey(name, 0), list(prompt), params, 0, time.time()))
        if k % 2:
            reqs.append(Request(RequestKey(f"free{k}", 0), list(prompt), SamplingParams(max_new_tokens=max_new // 2), 0, time.time()))
    return reqs


def _drive(engine: LLMEngine, reqs: list[Request], until: float = 120.0) -> tuple[dict[str, list[int]], dict[str, Any]]:
    tokens: dict[str, list[int]] = {}
    reasons: dict[str, Any] = {}

    def step() -> None:
        for o in engine.step():
            assert o.error is None, o.error
            tokens.setdefault(o.key.req_id, []).extend(o.new_token_ids)
            if o.is_last:
                reasons[o.key.req_id] = o.finish_reason

    for i, req in enumerate(reqs):
        engine.add_request(req)
        if i % 3 == 2:  # arrivals interleave with running decodes
            step()
    deadline = time.monotonic() + until
    while engine.has_unfinished_requests():
        assert time.monotonic() < deadline, "the engine did not finish in time"
        step()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    return tokens, reasons


def _fake_engine(compiler: GrammarCompiler, overlap: bool) -> tuple[LLMEngine, FakeRunner]:
    config = WorkerConfig(block_size=4, max_batch_prefill_tokens=64, waiting_served_ratio=0.0)
    runner = FakeRunner(4, 64, can_overlap=overlap)
    engine = LLMEngine(config, runner, num_blocks=256, eos_token_ids=frozenset({EOS}), max_model_len=4096, grammars=compiler)
    return engine, runner


def _valid(compiler: GrammarCompiler, name: str, tokens: list[int]) -> bool:
    matcher = compiler.matcher(GRAMMARS[name], [])
    return bool(matcher.consume_tokens(tokens))


def test_constrained_steps_launch_ahead_and_sample_once_the_last_tokens_are_read(compiler: GrammarCompiler) -> None:
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    one_step, one_runner = _fake_engine(compiler, overlap=False)
    expected = _drive(one_step, _requests(prompts, 24))
    engine, runner = _fake_engine(compiler, overlap=True)
    got = _drive(engine, _requests(prompts, 24))
    assert got == expected
    tokens, reasons = got
    for name in GRAMMARS:  # the fake picks among allowed tokens: every text follows its grammar
        assert _valid(compiler, name, tokens[name]), name
    assert "eos_token" in {reasons[name] for name in GRAMMARS}  # some grammar ran to its end
    # Each step with a constrained row was launched before the step ahead of it was read, and
    # sampled only after: the matchers held that step's tokens when its masks were filled.
    at = {call: k for k, call in enumerate(runner.calls)}
    ahead = [b.step for b in runner.batches
             if any(r.grammar is not None and r.do_sample for r in b.requests) and ("wait", b.step - 1) in at]
    assert len(ahead) > 10
    for s in ahead:
        assert at[("launch", s)] < at[("wait", s - 1)] < at[("sample", s)], s
    one = {call: k for k, call in enumerate(one_runner.calls)}
    assert all(one[("launch", b.step)] > one[("wait", b.step - 1)] for b in one_runner.batches[1:])


@pytest.mark.parametrize("overlap", [False, True], ids=["one-step", "overlapped"])
def test_requests_of_a_cached_grammar_that_arrive_together_start_in_one_step(
        compiler: GrammarCompiler, overlap: bool) -> None:
    # Their matchers are copied as they arrive: no wave of the first few compiled, then a step
    # carrying the rest's prompts beside those decodes.
    compiler.matcher(GRAMMARS["nested"], [])
    engine, runner = _fake_engine(compiler, overlap=overlap)
    for i in range(6):
        params = SamplingParams(max_new_tokens=4, grammar=GRAMMARS["nested"])
        engine.add_request(Request(RequestKey(f"r{i}", 0), [5, 6, 7 + i], params, 0, time.time()))
    engine.step()
    assert len(runner.batches[0].requests) == 6 and runner.batches[0].num_decode == 0
    tokens, _ = _drive(engine, [])
    assert all(len(t) == 3 for t in tokens.values()) and len(tokens) == 6  # the first came with the step above


def test_a_request_its_grammar_ends_gets_no_mask_in_the_step_already_launched(compiler: GrammarCompiler) -> None:
    grammar = compile_grammar(GrammarSpec("regex", "(yes|no)"))
    engine, runner = _fake_engine(compiler, overlap=True)
    short = Request(RequestKey("short", 0), [5, 6, 7], SamplingParams(max_new_tokens=20, grammar=grammar), 0, time.time())
    long = Request(RequestKey("long", 0), [8, 9], SamplingParams(max_new_tokens=12, grammar=GRAMMARS["phone"]), 0, time.time())
    tokens, reasons = _drive(engine, [short, long])
    # "yes" or "no" is one token or a few, then the grammar allows only EOS: it ends there.
    assert reasons["short"] == "eos_token" and tokens["short"][-1] == EOS and EOS not in tokens["short"][:-1]
    assert _valid(compiler, "phone", tokens["long"])
    # The step after its EOS was launched before the EOS was read: its row there got no mask
    # (its matcher had stopped) and its sample was dropped.
    steps_with_short = [b.step for b in runner.batches if any(r.key.req_id == "short" for r in b.requests)]
    assert len(steps_with_short) == 1 + len(tokens["short"])  # the prefill samples the first token
    # Each request ended by EOS left one such row (a length finish is known ahead: none).
    assert sorted(runner.unmasked) == sorted(RequestKey(name, 0) for name, why in reasons.items() if why == "eos_token")


class _GivesUpAt:
    """A matcher whose lexer gives up at its n-th token (as past worker/grammar.py's PARSER_LIMITS)."""

    def __init__(self, inner: Any, n: int) -> None:
        self.inner, self.left = inner, n

    def compute_bitmask(self) -> bytes:
        return bytes(self.inner.compute_bitmask())

    def consume_token(self, token: int) -> bool:
        self.left -= 1
        return self.left > 0 and bool(self.inner.consume_token(token))

    def get_error(self) -> str:
        return "lexer error: out of fuel"


@pytest.mark.parametrize("overlap", [False, True], ids=["one-step", "overlapped"])
def test_a_matcher_that_gives_up_mid_flight_ends_its_request_and_only_it(
        compiler: GrammarCompiler, monkeypatch: pytest.MonkeyPatch, overlap: bool) -> None:
    start = compiler.start

    def giving_up(grammar: str, replay: list[int]) -> Future[Any]:
        done: Future[Any] = Future()
        done.set_result(_GivesUpAt(start(grammar, replay).result(timeout=10), 3))
        return done

    engine, runner = _fake_engine(compiler, overlap=overlap)
    engine.add_request(Request(RequestKey("free", 0), [1, 2, 3], SamplingParams(max_new_tokens=6), 0, time.time()))
    monkeypatch.setattr(compiler, "start", giving_up)
    engine.add_request(Request(RequestKey("bad", 0), [1, 2, 3], SamplingParams(max_new_tokens=6, grammar=GRAMMARS["phone"]),
                               0, time.time()))
    outs = []
    deadline = time.monotonic() + 10
    while engine.has_unfinished_requests():
        assert time.monotonic() < deadline
        outs += engine.step()
    bad = [o for o in outs if o.key.req_id == "bad"]
    assert [len(o.new_token_ids) for o in bad] == [1, 1, 0]  # the third token was refused
    assert bad[-1].error == "Input validation error: grammar is not valid: lexer error: out of fuel"
    assert sum(len(o.new_token_ids) for o in outs if o.key.req_id == "free") == 6
    # Overlapped, the step after the refused token was already launched: the request's row there
    # got no mask, and its sample went nowhere.
    assert runner.unmasked == ([RequestKey("bad", 0)] if overlap else [])
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_the_default_model_writes_the_same_text_overlapped_as_one_step_at_a_time(
        default_model_dir: Path, compiler: GrammarCompiler) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    prompts = [tokenizer(text).input_ids for text in ("A place, as JSON:", "The answer:")]  # short: a cheap prefill
    config = WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=4096, max_batch_prefill_tokens=256,
                          waiting_served_ratio=0.0)
    runner = ModelRunner(config, default_model_dir)
    names = ("anyof", "phone", "nested")  # two end by EOS within 20 tokens, one is cut
    deferred = 0
    launch = runner.launch

    def counting(batch: Any, previous: Any, *, defer_sample: bool = False) -> Any:
        nonlocal deferred
        deferred += defer_sample
        return launch(batch, previous, defer_sample=defer_sample)

    runner.launch = counting  # type: ignore[method-assign]
    results = []
    for overlap in (False, True):
        runner.can_overlap = overlap  # on CPU the launch runs at once; the two-half path is the same
        engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                           max_model_len=runner.max_model_len, grammars=compiler)
        assert engine.overlap == overlap
        results.append(_drive(engine, _requests(prompts, 20, names)))
    assert results[0] == results[1]
    assert deferred > 10  # the overlapped run sampled its constrained steps in a second half
    tokens, reasons = results[1]
    assert len(tokens) == len(names) + len(names) // 2
    for name in names:
        text = tokenizer.decode(tokens[name], skip_special_tokens=True)
        if reasons[name] != "eos_token":
            continue  # cut by max_new_tokens: a prefix of a valid text
        if name in REGEXES:
            assert re.fullmatch(REGEXES[name], text), (name, text)
        else:
            assert isinstance(json.loads(text), dict), (name, text)
    assert any(reasons[name] == "eos_token" for name in names), reasons
