"""ModelRunner.execute on its own: a minimal in-test scheduler drives it, transformers is the oracle."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from worker.batch import NOT_SAMPLED, ScheduledBatch, ScheduledRequest
from worker.input_builder import build_inputs
from worker.kv_cache import CPU_DEFAULT_TOKENS
from worker.model_runner import ModelRunner

PROMPTS = [
    "The capital of France is",
    "def add(a, b):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Translate to French: Good morning",
    "1, 2, 3, 4,",
]
NEW = 20


class TinyScheduler:
    """Contiguous blocks per request, whole-prompt (or fixed-size chunk) prefill, one decode per step."""

    def __init__(self, runner: ModelRunner, chunk: int = 10_000) -> None:
        self.runner, self.chunk, self.step = runner, chunk, 0
        self.next_block = 0
        self.reqs: dict[str, dict] = {}  # type: ignore[type-arg]

    def add(self, rid: str, prompt: list[int], params: SamplingParams, seed: int = 0) -> None:
        need = -(-(len(prompt) + params.max_new_tokens) // self.runner.block_size)
        blocks = list(range(self.next_block, self.next_block + need))
        self.next_block += need
        self.reqs[rid] = {"tokens": list(prompt), "computed": 0, "out": [], "lps": [], "tops": [],
                          "blocks": blocks, "params": params, "seed": seed, "prefill": []}

    def run_step(self) -> None:
        scheduled = []
        for rid, r in self.reqs.items():
            if len(r["out"]) >= r["params"].max_new_tokens:
                continue
            todo = r["tokens"][r["computed"] : r["computed"] + self.chunk]
            done = r["computed"] + len(todo) == len(r["tokens"])
            scheduled.append(ScheduledRequest(
                rid, todo, r["computed"], r["blocks"], done, r["params"], all_token_ids=r["tokens"],
                num_generated=len(r["out"]), seed=r["seed"], prefill_logprobs=r["params"].prefill_logprobs,
            ))
        scheduled.sort(key=lambda s: len(s.token_ids) != 1)  # decodes first, as the contract says
        num_decode = sum(len(s.token_ids) == 1 for s in scheduled)
        batch = ScheduledBatch(self.step, scheduled, num_decode, sum(len(s.token_ids) for s in scheduled))
        out = self.runner.execute(batch)
        self.step += 1
        assert out.keys == [s.key for s in scheduled]
        for s, tok, lp, top in zip(scheduled, out.sampled_token_ids, out.logprobs, out.top_tokens, strict=True):
            r = self.reqs[s.key]
            r["computed"] += len(s.token_ids)
            r["prefill"].extend(out.prefill_logprobs.get(s.key, []))
            if s.do_sample:
                r["tokens"].append(tok)
                r["out"].append(tok)
                r["lps"].append(lp)
                r["tops"].append(top)
            else:
                assert tok == NOT_SAMPLED

    def busy(self) -> bool:
        return any(len(r["out"]) < r["params"].max_new_tokens for r in self.reqs.values())


def _runner(model_dir: Path, dtype: str = "float32", tokens: int | None = 4096, block_size: int = 16) -> ModelRunner:
    return ModelRunner(WorkerConfig(device="cpu", dtype=dtype, max_batch_total_tokens=tokens, block_size=block_size), model_dir)


def _hf_greedy(model: torch.nn.Module, ids: list[int], new: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False, min_new_tokens=new,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out[0, len(ids):].tolist()  # type: ignore[no-any-return]


def test_smollm2_greedy_is_token_for_token_transformers(default_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    reference = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    runner = _runner(default_model_dir)
    sched = TinyScheduler(runner)
    params = SamplingParams(max_new_tokens=NEW, top_n_tokens=2)
    prompts = {f"p{i}": tokenizer(p).input_ids for i, p in enumerate(PROMPTS)}
    items = list(prompts.items())
    for rid, ids in items[:3]:
        sched.add(rid, ids, params)
    sched.run_step()
    sched.run_step()
    for rid, ids in items[3:]:  # arrivals join the running batch between decode steps
        sched.add(rid, ids, params)
    while sched.busy():
        sched.run_step()
    for rid, ids in items:
        r = sched.reqs[rid]
        assert r["out"] == _hf_greedy(reference, ids, NEW), tokenizer.decode(ids)
        # Greedy: the chosen token is the best alternative and carries its logprob.
        assert all(top[0][0] == tok and math.isclose(top[0][1], lp, abs_tol=1e-5)
                   for tok, lp, top in zip(r["out"], r["lps"], r["tops"], strict=True))
        assert all(lp <= 0.0 for lp in r["lps"])


def _tiny_llama(tmp_path: Path) -> tuple[Path, transformers.LlamaForCausalLM]:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny", model


def test_chunked_prefill_and_prefill_logprobs_match_one_shot(tmp_path: Path) -> None:
    path, reference = _tiny_llama(tmp_path)
    prompt = torch.randint(1, 97, (37,), generator=torch.Generator().manual_seed(3)).tolist()
    params = SamplingParams(max_new_tokens=6, prefill_logprobs=True)
    results = []
    for chunk in (10_000, 8, 5):  # 5 does not divide the 8-token block: chunks straddle blocks
        sched = TinyScheduler(_runner(path, block_size=8), chunk=chunk)
        sched.add("r", prompt, params)
        while sched.busy():
            sched.run_step()
        results.append(sched.reqs["r"])
    with torch.no_grad():
        logp = torch.log_softmax(reference(torch.tensor([prompt])).logits[0].float(), -1)  # (T, V)
    want = logp[:-1].gather(1, torch.tensor(prompt[1:]).unsqueeze(1)).squeeze(1)
    for r in results:
        assert r["out"] == _hf_greedy(reference, prompt, 6)
        assert len(r["prefill"]) == len(prompt) - 1
        torch.testing.assert_close(torch.tensor(r["prefill"]), want, rtol=1e-4, atol=1e-4)


def test_bfloat16_on_cpu_stays_close_to_float32(tmp_path: Path) -> None:
    path, _ = _tiny_llama(tmp_path)
    prompt = torch.randint(1, 97, (12,), generator=torch.Generator().manual_seed(4)).tolist()
    logprobs = {}
    for dtype in ("float32", "bfloat16"):
        runner = _runner(path, dtype=dtype)
        assert runner.dtype == getattr(torch, dtype) and runner.kv.layers[0][0].dtype == runner.dtype
        sched = TinyScheduler(runner)
        sched.add("r", prompt, SamplingParams(max_new_tokens=1, prefill_logprobs=True))
        sched.run_step()
        logprobs[dtype] = torch.tensor(sched.reqs["r"]["prefill"])
    torch.testing.assert_close(logprobs["bfloat16"], logprobs["float32"], rtol=0.05, atol=0.1)


def test_kv_pool_is_sized_from_config_or_the_cpu_default(tmp_path: Path) -> None:
    path, _ = _tiny_llama(tmp_path)
    sized = _runner(path, tokens=100, block_size=16)
    assert sized.num_blocks == 7 and sized.kv.capacity_tokens == 112  # rounded up to whole blocks
    assert sized.kv.layers[0][0].shape == (7, 16, 2, 16)  # (num_blocks, block_size, n_kv, D)
    assert len(sized.kv.layers) == 2
    default = _runner(path, tokens=None)
    assert default.kv.capacity_tokens == CPU_DEFAULT_TOKENS
    assert default.eos_token_ids == frozenset({2}) and default.max_model_len == 256


def test_seeded_sampling_through_execute_ignores_batch_neighbours(tmp_path: Path) -> None:
    path, _ = _tiny_llama(tmp_path)
    runner = _runner(path)
    params = SamplingParams(max_new_tokens=12, do_sample=True, temperature=1.5, seed=11)
    prompt = [5, 9, 13, 2, 40]

    def run(neighbours: int, seed: int) -> list[int]:
        sched = TinyScheduler(runner)
        for n in range(neighbours):
            sched.add(f"n{n}", [7 + n, 3, 8], params, seed=100 + n)
        sched.add("t", prompt, params, seed=seed)
        while sched.busy():
            sched.run_step()
        return sched.reqs["t"]["out"]  # type: ignore[no-any-return]

    alone = run(0, 11)
    assert run(3, 11) == alone
    assert run(0, 12) != alone


def test_mid_prompt_chunk_samples_nothing(tmp_path: Path) -> None:
    path, _ = _tiny_llama(tmp_path)
    runner = _runner(path, block_size=8)
    req = ScheduledRequest("r", [1, 2, 3], 0, [0], False, SamplingParams(max_new_tokens=1))
    out = runner.execute(ScheduledBatch(0, [req], 0, 3))
    assert out.sampled_token_ids == [NOT_SAMPLED] and out.logprobs == [0.0] and out.top_tokens == [[]]


def test_runner_names_an_unsupported_architecture(tmp_path: Path) -> None:
    path, _ = _tiny_llama(tmp_path)
    config = (path / "config.json").read_text().replace('"LlamaForCausalLM"', '"GPTNeoXForCausalLM"')
    (path / "config.json").write_text(config)
    with pytest.raises(ValueError, match="GPTNeoXForCausalLM"):
        _runner(path)


def test_build_inputs_lays_out_slots_tables_and_logit_rows() -> None:
    p = SamplingParams(max_new_tokens=4)
    batch = ScheduledBatch(3, [
        ScheduledRequest("d", [9], 5, [7, 2], True, p),  # decode at position 5: block 2, offset 1
        ScheduledRequest("c", [1, 2, 3], 2, [4, 1], False, p),  # mid-prompt chunk over two blocks
        ScheduledRequest("l", [5, 6], 0, [6], True, p, prefill_logprobs=True),  # every row's logits
    ], 1, 6)
    x = build_inputs(batch, 4, torch.device("cpu"))
    assert x.input_ids.tolist() == [9, 1, 2, 3, 5, 6]
    assert x.positions.tolist() == [5, 2, 3, 4, 0, 1]
    assert x.slot_mapping.tolist() == [9, 18, 19, 4, 24, 25]
    assert x.block_tables.tolist() == [[7, 2], [4, 1], [6, 0]] and x.block_tables.dtype == torch.int32
    assert x.seq_lens.tolist() == [6, 5, 2] and x.query_start_loc.tolist() == [0, 1, 4, 6]
    assert x.logits_rows.tolist() == [0, 4, 5] and x.layout.sample_batch_idx == [0, 2] and x.max_query_len == 3


def test_attention_metadata_is_scoped_to_one_forward(tmp_path: Path) -> None:
    from worker.attention import current_metadata, forward_context

    path, _ = _tiny_llama(tmp_path)
    runner = _runner(path, block_size=8)
    req = ScheduledRequest("r", [1, 2], 0, [0], True, SamplingParams(max_new_tokens=1))
    inputs = build_inputs(ScheduledBatch(0, [req], 0, 2), 8, runner.device)
    meta = runner.attention.prepare_metadata(inputs, runner.kv.layers)
    with forward_context(meta, runner.attention):
        assert current_metadata() is meta
        with pytest.raises(RuntimeError, match="re-entrant"), forward_context(meta):
            pass
    with pytest.raises(RuntimeError, match="outside"):
        current_metadata()
