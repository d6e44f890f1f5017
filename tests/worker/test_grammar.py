"""Grammar-constrained decoding in the worker: the compiler's cache and replay, the sampler's mask
stage, and the engine on the real default model (valid JSON, a continuation resumes the matcher,
a compiling grammar never holds up other requests). Constrained steps under overlapped
scheduling: tests/worker/test_engine_grammar.py."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from gateway.grammar import GrammarSpec, compile_grammar
from worker import grammar_mask, sampler
from worker.batch import ScheduledRequest
from worker.engine import LLMEngine
from worker.grammar import GrammarCompiler, GrammarError
from worker.model_runner import ModelRunner
from worker.request import Request, RequestKey
from tests.fakes import FakeRunner

SCHEMA = {"type": "object", "properties": {"city": {"enum": ["Paris", "London", "Rome"]},
                                           "rank": {"type": "integer", "minimum": 1, "maximum": 9}},
          "required": ["city", "rank"]}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def compiler(default_model_dir: Path) -> GrammarCompiler:
    return GrammarCompiler(default_model_dir / "tokenizer.json", 49152, frozenset({2}))


def _allowed(mask: grammar_mask.GrammarMask, row: int, vocab: int) -> set[int]:
    words = mask.bitmask[row].tolist()
    return {t for t in range(vocab) if (words[t // 32] >> (t % 32)) & 1}


def test_compiled_once_per_grammar_and_each_request_gets_its_own_matcher(compiler: GrammarCompiler) -> None:
    grammar = compile_grammar(GrammarSpec.json_schema(SCHEMA))
    first = compiler.start(grammar, []).result(timeout=10)
    second = compiler.start(grammar, []).result(timeout=10)
    assert first is not second and len(compiler._cache) >= 1
    cached = len(compiler._cache)
    compiler.start(grammar, []).result(timeout=10)
    assert len(compiler._cache) == cached  # the same grammar hit the cache
    assert first.consume_tokens(compiler.tokenizer.tokenize_str('{"city": "Rome"'))
    assert not second.is_error() and second.is_accepting() is False


def test_replay_resumes_where_the_tokens_left_off_and_refuses_tokens_off_the_grammar(compiler: GrammarCompiler) -> None:
    grammar = compile_grammar(GrammarSpec.json_schema(SCHEMA))
    done = compiler.tokenizer.tokenize_str('{"city": "Paris", "rank": 3}')
    resumed = compiler.start(grammar, done).result(timeout=10)
    assert resumed.is_accepting()
    with pytest.raises(GrammarError, match="do not match"):
        compiler.start(grammar, compiler.tokenizer.tokenize_str('{"town"')).result(timeout=10)


def test_mask_allows_exactly_what_the_matcher_accepts_and_leaves_other_rows_alone(compiler: GrammarCompiler) -> None:
    regex = compile_grammar(GrammarSpec("regex", "(yes|no)"))
    matcher = compiler.start(regex, []).result(timeout=10)
    vocab = 49152
    mask = grammar_mask.prepare([None, matcher, None], vocab, CPU)
    assert mask is not None and mask.rows.tolist() == [1]
    allowed = _allowed(mask, 0, vocab)
    texts = {compiler.tokenizer.decode_str([t]) for t in allowed}
    assert texts and all("yes".startswith(t) or "no".startswith(t) for t in texts), texts
    logits = torch.randn(3, vocab)
    out = grammar_mask.apply(logits, mask)
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    assert {int(t) for t in torch.nonzero(out[1] > float("-inf"))} == allowed
    assert grammar_mask.prepare([None, None], vocab, CPU) is None  # unconstrained steps pay nothing


@pytest.mark.parametrize("spec", [GrammarSpec("regex", r"\d+"),
                                  GrammarSpec.json_schema({"type": "string", "pattern": r"^\d+$"})], ids=["regex", "pattern"])
def test_digit_classes_are_ascii_as_tgi_and_json_schema_mean_them(compiler: GrammarCompiler, spec: GrammarSpec) -> None:
    matcher = compiler.start(compile_grammar(spec), [] if spec.kind == "regex" else compiler.tokenizer.tokenize_str('"')).result(timeout=10)
    mask = grammar_mask.prepare([matcher], 49152, CPU)
    assert mask is not None
    texts = {compiler.tokenizer.decode_str([t]) for t in _allowed(mask, 0, 49152)}
    assert texts and all(re.fullmatch("[0-9]+", t) for t in texts), sorted(texts)[:10]


def test_many_rows_fill_in_parallel_to_the_same_masks(compiler: GrammarCompiler) -> None:
    grammars = [compile_grammar(GrammarSpec("regex", r)) for r in ("(yes|no)", "[0-9]+", "[a-z]{2}")]
    matchers = [compiler.start(grammars[k % 3], []).result(timeout=10) for k in range(grammar_mask._PARALLEL_ROWS + 2)]
    together = grammar_mask.prepare([None, *matchers], 49152, CPU)
    assert together is not None and together.rows.tolist() == list(range(1, len(matchers) + 1))
    for k, m in enumerate(matchers):
        alone = grammar_mask.prepare([m], 49152, CPU)
        assert alone is not None and torch.equal(together.bitmask[k], alone.bitmask[0]), k


def test_sampler_picks_the_best_allowed_token_and_keeps_raw_logprobs(compiler: GrammarCompiler) -> None:
    matcher = compiler.start(compile_grammar(GrammarSpec("regex", "[0-9]+")), []).result(timeout=10)
    vocab = 49152
    reqs = [ScheduledRequest(RequestKey("r", 0), [1], 0, [0], True, SamplingParams(max_new_tokens=4, min_tokens=2),
                             grammar=m) for m in (matcher, None)]
    tensors = sampler.prepare(reqs, vocab, CPU, frozenset({2}))
    tensors.grammar = grammar_mask.prepare([r.grammar for r in reqs], vocab, CPU)
    logits = torch.randn(2, vocab)
    result = sampler.sample(logits, tensors)
    chosen = int(result.token_ids[0])
    assert re.fullmatch("[0-9]+", compiler.tokenizer.decode_str([chosen]))
    assert int(result.token_ids[1]) == int(logits[1].masked_fill(torch.arange(vocab) == 2, float("-inf")).argmax())
    torch.testing.assert_close(result.logprobs[0], torch.log_softmax(logits[0], -1)[chosen])


def _engine(model_dir: Path, compiler: GrammarCompiler) -> LLMEngine:
    config = WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=2048, max_batch_prefill_tokens=256)
    runner = ModelRunner(config, model_dir)
    return LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                     max_model_len=runner.max_model_len, grammars=compiler)


def _drive(engine: LLMEngine, until: float = 120.0) -> dict[RequestKey, list[int]]:
    out: dict[RequestKey, list[int]] = {}
    deadline = time.monotonic() + until
    while engine.has_unfinished_requests():
        assert time.monotonic() < deadline, "the engine did not finish in time"
        for o in engine.step():
            out.setdefault(o.key, []).extend(o.new_token_ids)
            assert o.error is None, o.error
    return out


def test_engine_output_is_valid_json_and_a_continuation_resumes_the_matcher(
    default_model_dir: Path, tokenizer, compiler: GrammarCompiler  # type: ignore[no-untyped-def]
) -> None:
    engine = _engine(default_model_dir, compiler)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Pick a city and a rank as JSON."}],
                                           add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    params = SamplingParams(max_new_tokens=40, grammar=compile_grammar(GrammarSpec.json_schema(SCHEMA)))
    free = SamplingParams(max_new_tokens=8)
    engine.add_request(Request(RequestKey("whole", 0), list(ids), params, 0, time.time()))
    engine.add_request(Request(RequestKey("free", 0), list(ids), free, 0, time.time()))
    got = _drive(engine)
    whole = got[RequestKey("whole", 0)]
    assert whole[-1] == 2  # the grammar ended it with EOS, not the budget
    value = json.loads(tokenizer.decode(whole, skip_special_tokens=True))
    assert value["city"] in SCHEMA["properties"]["city"]["enum"] and 1 <= value["rank"] <= 9  # type: ignore[index]
    # A second attempt elsewhere gets the prompt plus the tokens already relayed (Request.from_wire)
    # and a fresh matcher replayed through them: greedy decoding goes on exactly as before.
    cut = 5
    resumed = Request(RequestKey("whole", 1), [*ids, *whole[:cut]], params, 0, time.time(), num_generated_offset=cut)
    engine.add_request(resumed)
    rest = _drive(engine)[RequestKey("whole", 1)]
    assert whole[:cut] + rest == whole
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def _fake_engine(compiler: GrammarCompiler | None) -> LLMEngine:
    config = WorkerConfig(block_size=4, max_batch_prefill_tokens=32, waiting_served_ratio=0.0)
    return LLMEngine(config, FakeRunner(4, 32), num_blocks=32,
                     eos_token_ids=frozenset({0}), max_model_len=4096, grammars=compiler)


def test_a_compiling_grammar_does_not_hold_up_other_requests(compiler: GrammarCompiler) -> None:
    engine = _fake_engine(compiler)
    gate = threading.Event()
    blockers = [compiler._pool.submit(gate.wait, 60) for _ in range(compiler._pool._max_workers)]
    grammar = compile_grammar(GrammarSpec("regex", "[a-z]{3}"))
    try:
        engine.add_request(Request(RequestKey("constrained", 0), [1, 2, 3], SamplingParams(max_new_tokens=3, grammar=grammar), 0, time.time()))
        engine.add_request(Request(RequestKey("free", 0), [1, 2, 3], SamplingParams(max_new_tokens=3), 0, time.time()))
        produced: dict[RequestKey, int] = {}
        for _ in range(3):
            for o in engine.step():
                produced[o.key] = produced.get(o.key, 0) + len(o.new_token_ids)
        assert produced == {RequestKey("free", 0): 3}  # it ran to its end while the grammar waited
        assert engine.has_unfinished_requests()
    finally:
        gate.set()
        for b in blockers:
            b.result(timeout=10)
    deadline = time.monotonic() + 10
    # Once compiled it runs (the fake samples among the tokens its matcher allows).
    while not any(o.key == RequestKey("constrained", 0) for o in engine.step()):
        assert time.monotonic() < deadline, "the compiled request was never scheduled"


def test_a_grammar_the_vocabulary_cannot_serve_ends_with_a_validation_error(compiler: GrammarCompiler) -> None:
    engine = _fake_engine(compiler)
    engine.add_request(Request(RequestKey("bad", 0), [1, 2], SamplingParams(max_new_tokens=2, grammar="start: nope"), 0, time.time()))
    deadline = time.monotonic() + 10
    outputs = []
    while engine.has_unfinished_requests():
        assert time.monotonic() < deadline
        outputs += engine.step()
    assert len(outputs) == 1 and outputs[0].is_last and outputs[0].error is not None
    assert outputs[0].error.startswith("Input validation error: grammar is not valid")


def test_a_worker_without_grammars_refuses_constrained_requests() -> None:
    with pytest.raises(ValueError, match="grammar is not supported"):
        _fake_engine(None).add_request(Request(RequestKey("r", 0), [1], SamplingParams(max_new_tokens=1, grammar="x"), 0, time.time()))


def test_a_pathological_regex_fails_its_request_without_stalling_the_others(
        default_model_dir: Path, compiler: GrammarCompiler, monkeypatch: pytest.MonkeyPatch) -> None:
    # llguidance builds a regex's lexer states lazily, on the first mask: without limits, and with
    # that mask on the engine thread, `a{1000000000}` stalled every request's step for 2.5-4 s here.
    # The masks filled on the engine thread are timed (whole steps vary too much on a loaded CPU).
    fills: list[float] = []
    prepare = grammar_mask.prepare

    def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return prepare(*args, **kwargs)
        finally:
            fills.append(time.perf_counter() - started)

    monkeypatch.setattr(grammar_mask, "prepare", timed)
    engine = _engine(default_model_dir, compiler)
    grammar = compile_grammar(GrammarSpec("regex", "a{1000000000}"))  # the gateway's check passes it
    engine.add_request(Request(RequestKey("bomb", 0), [1, 2], SamplingParams(max_new_tokens=8, grammar=grammar), 0, time.time()))
    engine.add_request(Request(RequestKey("free", 0), [1, 2], SamplingParams(max_new_tokens=8, ignore_eos=True), 0, time.time()))
    outputs = []
    for _ in range(40):
        if not engine.has_unfinished_requests():
            break
        outputs += engine.step()
    assert not engine.has_unfinished_requests()
    bomb = [o for o in outputs if o.key == RequestKey("bomb", 0)]
    assert bomb[-1].error is not None and "grammar is not valid: lexer error" in bomb[-1].error, bomb
    assert sum(len(o.new_token_ids) for o in outputs if o.key == RequestKey("free", 0)) == 8
    assert fills and max(fills) < 0.5, fills
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
