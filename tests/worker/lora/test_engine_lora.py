"""LoRA in the engine on the real default model (CPU, float32): each request's greedy tokens equal
transformers + peft's merged model of its adapter, with rows of 4 adapters and the base in one batch."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from tests.worker.lora.adapters import ATTENTION, make_adapter
from worker.engine import LLMEngine
from worker.lora.peft import AdapterSpec
from worker.model_runner import ModelRunner
from worker.request import Request, RequestKey

pytest.importorskip("peft")

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
NEW = 8
# id -> (seed, rank, targets, rsLoRA): ranks differ (padded in one table), one adapts attention only.
ADAPTERS = {"alpha": (1, 8, None, False), "beta": (2, 4, ATTENTION, False), "gamma": (3, 8, None, True),
            "delta": (4, 16, ("q_proj", "v_proj", "down_proj"), False)}


def _greedy(model: torch.nn.Module, ids: list[int]) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False,
                         attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out[0, len(ids):].tolist()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def adapters(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict[tuple[str, str], list[int]]]:
    """Each adapter's directory, and the merged model's greedy tokens per (adapter, prompt); "" = base."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    base = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    root = tmp_path_factory.mktemp("lora")
    paths, expected = {}, {}
    for p in PROMPTS:
        expected[("", p)] = _greedy(base, tokenizer(p).input_ids)
    for name, (seed, r, targets, rslora) in ADAPTERS.items():
        kwargs = {"targets": targets} if targets else {}
        merged = make_adapter(base, root / name, seed, r=r, rslora=rslora, **kwargs)
        paths[name] = root / name
        for p in PROMPTS:
            expected[(name, p)] = _greedy(merged, tokenizer(p).input_ids)
        del merged
    return paths, expected


def _engine(model_dir: Path) -> tuple[LLMEngine, ModelRunner]:
    config = WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=4096, max_batch_prefill_tokens=512,
                          waiting_served_ratio=0.0)
    runner = ModelRunner(config, model_dir)
    engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                       max_model_len=runner.max_model_len)
    return engine, runner


def _drain(engine: LLMEngine) -> dict[RequestKey, list[int]]:
    out: dict[RequestKey, list[int]] = {}
    deadline = time.monotonic() + 300
    while engine.has_unfinished_requests():
        assert time.monotonic() < deadline
        for o in engine.step():
            out.setdefault(o.key, []).extend(o.new_token_ids)
    return out


def test_adapters_and_base_in_one_batch_equal_peft_merged(default_model_dir: Path, adapters) -> None:  # type: ignore[no-untyped-def]
    paths, expected = adapters
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    engine, runner = _engine(default_model_dir)
    assert runner.adapters is not None
    for name, path in paths.items():
        runner.adapters.load(AdapterSpec(name, str(path)))
    assert runner.adapters.ids == tuple(ADAPTERS)
    names = ["", *ADAPTERS]
    params = SamplingParams(max_new_tokens=NEW, ignore_eos=True)
    wanted = {}
    for i in range(16):  # every request admitted before the first step: one batch of 16
        adapter, prompt = names[i % len(names)], PROMPTS[i % len(PROMPTS)]
        req = Request(RequestKey(f"r{i}", 0), tokenizer(prompt).input_ids, params, 0, time.time(), adapter_id=adapter)
        engine.add_request(req)
        wanted[req.key] = expected[(adapter, prompt)]
    first = engine.scheduler.schedule  # the first step holds all 16 prompts, adapters and base mixed
    batches = []
    engine.scheduler.schedule = lambda: batches.append(first()) or batches[-1]  # type: ignore[method-assign]
    got = _drain(engine)
    assert len(batches[0].requests) == 16 and {r.adapter_id for r in batches[0].requests} == set(names)
    assert got == wanted
    # The adapters change the text: otherwise equality with the base would prove nothing.
    assert all(any(expected[(a, p)] != expected[("", p)] for p in PROMPTS) for a in ADAPTERS)
