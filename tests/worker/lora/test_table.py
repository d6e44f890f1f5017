"""The adapter table on a tiny random Llama: PEFT's format read and checked, greedy tokens equal to
transformers + peft's merged model, the prefix cache keyed by adapter, loads, unloads and limits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import transformers

from common.config import WorkerConfig
from common.protocol import Accepted, Error, LoadAdapter, UnloadAdapter
from common.sampling_params import SamplingParams
from common.streams import Keys
from tests.worker.lora.adapters import make_adapter
from tests.worker.test_model_runner import _tiny_llama
from worker.engine import LLMEngine
from worker.lora.control import AdapterControl
from worker.lora.peft import AdapterError, AdapterSpec, parse_adapter_specs
from worker.model_runner import ModelRunner
from worker.request import Request, RequestKey

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, transformers.LlamaForCausalLM]:
    return _tiny_llama(tmp_path_factory.mktemp("lora-tiny"))


def _engine(path: Path, **overrides: object) -> tuple[LLMEngine, ModelRunner]:
    settings: dict[str, object] = {"device": "cpu", "dtype": "float32", "max_batch_total_tokens": 1024,
                                   "block_size": 4, "waiting_served_ratio": 0.0}
    config = WorkerConfig(**{**settings, **overrides})  # type: ignore[arg-type]
    runner = ModelRunner(config, path)
    return LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=frozenset(),
                     max_model_len=runner.max_model_len), runner


def _generate(engine: LLMEngine, prompts: dict[str, tuple[list[int], str]], new: int) -> dict[str, list[int]]:
    params = SamplingParams(max_new_tokens=new, ignore_eos=True)
    for rid, (ids, adapter) in prompts.items():
        engine.add_request(Request(RequestKey(rid, 0), ids, params, 0, time.time(), adapter_id=adapter))
    out: dict[str, list[int]] = {}
    deadline = time.monotonic() + 60
    while engine.has_unfinished_requests():
        assert time.monotonic() < deadline
        for o in engine.step():
            out.setdefault(o.key.req_id, []).extend(o.new_token_ids)
    return out


def _greedy(model: torch.nn.Module, ids: list[int], new: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out[0, len(ids):].tolist()  # type: ignore[no-any-return]


@pytest.mark.parametrize(("r", "targets", "rslora"), [
    (8, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), False),
    (4, ("k_proj", "up_proj"), True),  # one part of each fused projection; alpha / sqrt(r)
])
def test_greedy_equals_peft_merged(tiny, tmp_path: Path, r: int, targets: tuple[str, ...], rslora: bool) -> None:  # type: ignore[no-untyped-def]
    path, base = tiny
    merged = make_adapter(base, tmp_path / "a", 7, r=r, targets=targets, rslora=rslora, scale=0.3)
    engine, runner = _engine(path)
    assert runner.adapters is not None
    runner.adapters.load(AdapterSpec("a", str(tmp_path / "a")))
    prompt = torch.randint(1, 97, (11,), generator=torch.Generator().manual_seed(r)).tolist()
    got = _generate(engine, {"lora": (prompt, "a"), "base": (prompt, "")}, 12)
    assert got["lora"] == _greedy(merged, prompt, 12)
    assert got["base"] == _greedy(base, prompt, 12)
    assert got["lora"] != got["base"]


def test_the_prefix_cache_is_keyed_by_adapter(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, base = tiny
    make_adapter(base, tmp_path / "a", 1)
    engine, runner = _engine(path)
    assert runner.adapters is not None
    runner.adapters.load(AdapterSpec("a", str(tmp_path / "a")))
    prompt = list(range(1, 30))  # seven full blocks of 4
    for i, adapter in enumerate(["", "a", "", "a"]):
        before = engine.blocks.prefix_hit_tokens
        _generate(engine, {f"p{i}": (prompt, adapter)}, 3)
        # The first of base and of "a" find nothing (the other's KV is not theirs); the second of each its own.
        assert (engine.blocks.prefix_hit_tokens > before) == (i >= 2), (i, adapter)
    engine.blocks.forget_adapter("a")  # unloaded: a reload under the id may be other weights
    before = engine.blocks.prefix_hit_tokens
    _generate(engine, {"p4": (prompt, "a")}, 3)
    assert engine.blocks.prefix_hit_tokens == before


def test_what_cannot_be_served_exactly_is_refused(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, base = tiny
    other = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))
    make_adapter(other, tmp_path / "other", 0)
    _, runner = _engine(path)
    table = runner.adapters
    assert table is not None
    with pytest.raises(AdapterError, match="another base model"):
        table.load(AdapterSpec("other", str(tmp_path / "other")))
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        table.load(AdapterSpec("empty", str(tmp_path)))
    with pytest.raises(AdapterError, match="no directory"):
        table.load(AdapterSpec("gone", str(tmp_path / "missing")))
    make_adapter(base, tmp_path / "ok", 0)
    config = json.loads((tmp_path / "ok" / "adapter_config.json").read_text())
    for change, reason in [({"use_dora": True}, "DoRA"), ({"bias": "all"}, "bias"),
                           ({"modules_to_save": ["lm_head"]}, "modules_to_save"), ({"r": 0}, "r >= 1"),
                           ({"peft_type": "IA3"}, "not LORA")]:
        (tmp_path / "ok" / "adapter_config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(AdapterError, match=reason):
            table.load(AdapterSpec("ok", str(tmp_path / "ok")))
    assert table.ids == ()


def test_loads_unloads_and_the_limit(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, base = tiny
    for name in ("a", "b", "c"):
        make_adapter(base, tmp_path / name, ord(name))
    engine, runner = _engine(path, max_loras=2)
    control = AdapterControl(runner.adapters, "w1", engine.blocks.forget_adapter)
    load = lambda name: control.handle(LoadAdapter(name, str(tmp_path / name), "gw", f"r-{name}"))  # noqa: E731
    assert load("a") == Accepted("r-a", 0, "w1") and load("b") == Accepted("r-b", 0, "w1")
    refused = load("c")
    assert isinstance(refused, Error) and "--max-loras 2" in refused.message and control.ids == ("a", "b")
    again = load("a")
    assert isinstance(again, Error) and "already been loaded" in again.message
    # Unloading one in use: no new request of it is admitted at once; its weights go when the last one ends.
    key = RequestKey("x", 0)
    assert control.admit(key, "a") is None
    assert control.handle(UnloadAdapter("a", "gw", "u")) == Accepted("u", 0, "w1")
    assert control.ids == ("b",) and "not loaded" in (control.admit(RequestKey("y", 0), "a") or "")
    assert runner.adapters is not None and runner.adapters.ids == ("a", "b")
    control.release(key)
    assert runner.adapters.ids == ("b",)
    assert load("c") == Accepted("r-c", 0, "w1") and control.ids == ("b", "c")
    gone = control.handle(UnloadAdapter("zzz", "gw", "u2"))
    assert isinstance(gone, Error) and "cannot be found" in gone.message


def test_a_worker_started_later_loads_the_fleets_runtime_adapters(tiny, tmp_path: Path, redis_url: str,  # type: ignore[no-untyped-def]
                                                                   key_prefix: str) -> None:
    import redis

    path, base = tiny
    make_adapter(base, tmp_path / "late", 5)
    _, runner = _engine(path)
    control = AdapterControl(runner.adapters, "w2")
    # What the gateway recorded in Redis: one loadable, one this host cannot read (logged, not served).
    client = redis.Redis.from_url(redis_url)
    key = Keys(key_prefix).runtime_adapters("m")
    client.hset(key, mapping={"late": str(tmp_path / "late"), "elsewhere": str(tmp_path / "missing")})
    control.load_recorded(client, key)
    client.close()
    assert control.ids == ("late",)


def test_lora_adapters_flag(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    specs = parse_adapter_specs(f" org/adapter@v2, named={tmp_path}/x ,{tmp_path / 'mine'}")
    assert [(s.adapter_id, s.source, s.revision) for s in specs] == [
        ("org/adapter", "org/adapter", "v2"), ("named", f"{tmp_path}/x", None), ("mine", str(tmp_path / "mine"), None)]
    assert parse_adapter_specs(None) == [] and parse_adapter_specs("") == []
    with pytest.raises(AdapterError, match="twice"):
        parse_adapter_specs("a=/x,a=/y")
    with pytest.raises(AdapterError, match="adapter id"):
        parse_adapter_specs("bad id=/x")
