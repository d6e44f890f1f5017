"""The EAGLE-3 draft model: its checkpoint read in the published names, every malformed one refused
with a SpeculatorError naming the problem, and its drafts on a real tiny Llama equal to a dense
torch reference of the draft over the request's whole token sequence at every step (chunked
prefill, verification with rejections, scratch blocks for the chain)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from load.speculator_heads import successors, write_eagle3
from tests.worker.test_model_runner import _tiny_llama
from worker.engine import LLMEngine
from worker.model_runner import ModelRunner
from worker.models import ModelConfig
from worker.request import Request
from worker.speculative.eagle3 import Eagle3Draft
from worker.speculative.heads import SpeculatorError, load_speculator

V, H = 97, 64
TARGET = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "vocab_size": V, "hidden_size": H,
                                "intermediate_size": 128, "num_hidden_layers": 8, "num_attention_heads": 4})
CPU = torch.device("cpu")


def _load(directory: Path, speculate: int | None = None):  # type: ignore[no-untyped-def]
    return load_speculator(directory, TARGET, speculate, torch.float32, CPU)


def _edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def _config(d: Path, **changes: object) -> None:
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, **changes}))


def test_the_published_layout_loads(tmp_path: Path) -> None:
    d = write_eagle3(tmp_path / "a", H, V, draft_vocab=40)  # no layer ids: vLLM's default (2, L // 2, L - 3)
    draft = _load(d)
    assert isinstance(draft, Eagle3Draft) and draft.method == "eagle3"
    assert draft.num_heads == 3 and draft.aux_layers == (2, 4, 5)  # no --speculate: a chain of 3
    t = load_file(str(d / "model.safetensors"))
    assert torch.equal(draft.draft_to_target, torch.arange(40) + t["d2t"])
    assert draft.embed is None  # shared with the target when bound
    assert torch.equal(draft.self_attn.qkv_proj.weight, torch.cat([t[f"midlayer.self_attn.{p}_proj.weight"] for p in "qkv"]))
    # The speculators library's names (`layers.0.`, a leading `model.`) are the same tensors.
    _edit(d / "model.safetensors", lambda ts: ts.update(
        {("model." + k.replace("midlayer.", "layers.0.") if k.startswith("midlayer.") else k): ts.pop(k) for k in list(ts)}))
    again = _load(d, speculate=5)
    assert again.num_heads == 5 and torch.equal(again.fc.weight, draft.fc.weight)
    _config(d, attention_bias=True)  # Llama's flag: q, k, v and o biases, each read
    with pytest.raises(SpeculatorError, match="'midlayer.self_attn.q_proj.bias' is missing"):
        _load(d)
    biases = {f"layers.0.self_attn.{p}_proj.bias": torch.randn(n) for p, n in (("q", 64), ("k", 32), ("v", 32), ("o", 64))}
    _edit(d / "model.safetensors", lambda ts: ts.update(biases))
    biased = _load(d)
    assert torch.equal(biased.self_attn.o_proj.bias, biases["layers.0.self_attn.o_proj.bias"])
    assert biased.self_attn.qkv_proj.bias.shape == (128,)


@pytest.mark.parametrize("problem, change, message", [
    ("two layers", lambda d: _config(d, num_hidden_layers=2), "num_hidden_layers is 2; EAGLE-3 drafts with one layer"),
    ("vocabulary", lambda d: _config(d, vocab_size=98), "vocabulary 98 and hidden size 64; this model has 97 and 64"),
    ("target width", lambda d: _config(d, target_hidden_size=32), "vocabulary 97 and hidden size 32"),
    ("not a config", lambda d: _config(d, hidden_size=None), "config.json is not a Llama layer's config"),
    ("layer ids", lambda d: _config(d, eagle_config={"eagle_aux_hidden_state_layer_ids": [1, 2, 8]}),
     r"\[1, 2, 8\]: the draft fuses three layers of the model, each in 0..7"),
    ("draft vocab", lambda d: _config(d, draft_vocab_size="many"), "draft_vocab_size must be an integer"),
    ("missing", lambda d: _edit(d / "model.safetensors", lambda t: t.pop("midlayer.hidden_norm.weight")),
     "'midlayer.hidden_norm.weight' is missing"),
    ("shape", lambda d: _edit(d / "model.safetensors", lambda t: t.update({"fc.weight": torch.zeros(64, 128)})),
     r"'fc.weight' .* shape \(64, 128\), the model needs \(64, 192\)"),
    ("no d2t", lambda d: _edit(d / "model.safetensors", lambda t: t.pop("d2t")), "'d2t' is missing: a draft vocabulary of 40"),
    ("d2t range", lambda d: _edit(d / "model.safetensors", lambda t: t.update({"d2t": t["d2t"] + 60})),
     r"d2t maps draft ids outside the vocabulary \(0..96\)"),
    ("d2t dtype", lambda d: _edit(d / "model.safetensors", lambda t: t.update({"d2t": t["d2t"].float()})),
     "d2t must be .* integer offsets"),
    ("no weights", lambda d: (d / "model.safetensors").unlink(), "no weights file found"),
    ("own width", lambda d: _config(d, hidden_size=128, intermediate_size=256), "midlayer.self_attn.q_proj.weight"),
])
def test_malformed_drafts_are_refused(tmp_path: Path, problem: str, change, message: str) -> None:  # type: ignore[no-untyped-def]
    d = write_eagle3(tmp_path / "a", H, V, draft_vocab=40, aux_layers=[1, 3, 6])
    change(d)
    with pytest.raises(SpeculatorError, match=message):
        _load(d)


def test_a_draft_without_an_embedding_needs_the_models_width(tmp_path: Path) -> None:
    d = write_eagle3(tmp_path / "a", H, V, hidden=32, aux_layers=[1, 3, 6])
    with pytest.raises(SpeculatorError, match="no embed_tokens.weight and its hidden size 32 is not the model's"):
        _load(d)
    d = write_eagle3(tmp_path / "b", H, V, hidden=32, aux_layers=[1, 3, 6], own_embedding=True)
    assert _load(d).embed.shape == (V, 32)


def test_a_worker_with_a_malformed_draft_exits_with_the_reason(tmp_path: Path, default_model_dir: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from common.config import FleetConfig
    from worker.worker import run_worker

    d = write_eagle3(tmp_path / "e", 576, 49152, heads=9, kv_heads=3, intermediate=64, draft_vocab=512)
    _edit(d / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    config = WorkerConfig(fleet=FleetConfig(model_id=str(default_model_dir)), device="cpu", speculative_model=str(d))
    assert run_worker(config) == 2  # before it ever reaches Redis
    assert "EAGLE-3 heads: tensor 'lm_head.weight' is missing" in capsys.readouterr().err


def test_a_draft_is_refused_on_a_sharded_worker(tmp_path: Path) -> None:
    from worker.speculative.heads import speculator_for

    d = write_eagle3(tmp_path / "e", H, V, aux_layers=[1, 3, 6])
    with pytest.raises(SpeculatorError, match="not served with --num-shard > 1"):
        speculator_for(WorkerConfig(speculative_model=str(d)), tmp_path, TARGET, torch.float32, CPU, sharded=True)


# -- drafts against a dense reference ----------------------------------------------------------

def _reference_drafts(target: transformers.LlamaForCausalLM, d: Path, tokens: list[int], k: int) -> list[int]:
    """The draft over `tokens` in one dense causal pass per chained token (no paged KV)."""
    cfg = json.loads((d / "config.json").read_text())
    t = load_file(str(d / "model.safetensors"))
    aux = cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"]  # the tests name them
    heads, kv_heads, hidden = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    dim, eps = hidden // heads, cfg["rms_norm_eps"]
    with torch.no_grad():
        states = target(torch.tensor([tokens[:-1]]), output_hidden_states=True).hidden_states
    fused = torch.cat([states[i][0] for i in aux], -1) @ t["fc.weight"].T  # (N, hidden): row p from token p
    embed = t.get("embed_tokens.weight", target.model.embed_tokens.weight.detach())
    d2t = torch.arange(t["lm_head.weight"].shape[0])
    d2t = d2t + t["d2t"] if "d2t" in t else d2t

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * t[name]

    def rope(x: torch.Tensor) -> torch.Tensor:  # (heads, N, dim), neox halves
        inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        ang = torch.outer(torch.arange(x.shape[1], dtype=torch.float64), inv).float()
        x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
        return torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], -1)

    ids, rows, drafts = list(tokens[1:]), fused, []  # row p takes the token at p + 1
    for _ in range(k):
        normed = norm(rows, "midlayer.hidden_norm.weight")
        residual = normed if cfg["norm_before_residual"] else rows
        x = torch.cat([norm(embed[torch.tensor(ids)], "midlayer.input_layernorm.weight"), normed], -1)
        q, kk, v = (x @ t[f"midlayer.self_attn.{p}_proj.weight"].T for p in "qkv")
        q = rope(q.view(-1, heads, dim).transpose(0, 1))
        kk = rope(kk.view(-1, kv_heads, dim).transpose(0, 1)).repeat_interleave(heads // kv_heads, 0)
        v = v.view(-1, kv_heads, dim).transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
        a = F.scaled_dot_product_attention(q, kk, v, is_causal=True, scale=1 / math.sqrt(dim))
        h = a.transpose(0, 1).reshape(len(ids), -1) @ t["midlayer.self_attn.o_proj.weight"].T + residual
        m = norm(h, "midlayer.post_attention_layernorm.weight")
        out = (F.silu(m @ t["midlayer.mlp.gate_proj.weight"].T) * (m @ t["midlayer.mlp.up_proj.weight"].T)
               @ t["midlayer.mlp.down_proj.weight"].T + h)  # (N, hidden): before the last norm
        drafts.append(int(d2t[(norm(out[-1], "norm.weight") @ t["lm_head.weight"].T).argmax()]))
        ids, rows = ids + [drafts[-1]], torch.cat([rows, out[-1:]])  # the chain: one more row
    return drafts


def _engine(path: Path, draft: Path | None) -> LLMEngine:
    config = WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=1024, max_batch_prefill_tokens=24,
                          block_size=8, waiting_served_ratio=0.0, speculative_model=str(draft) if draft else None,
                          speculate=4 if draft else None)
    runner = ModelRunner(config, path)
    return LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                     max_model_len=runner.max_model_len, speculator=runner.speculator)


@pytest.mark.parametrize("kind", ["random", "successor"])
def test_drafts_equal_a_dense_pass_of_the_draft_at_every_step(tmp_path: Path, kind: str) -> None:
    path, target = _tiny_llama(tmp_path)
    g = torch.Generator().manual_seed(5)
    prompts = {"a": torch.randint(3, V, (37,), generator=g).tolist(), "b": torch.randint(3, V, (13,), generator=g).tolist()}
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    follow = None
    if kind == "successor":  # drafts that are often right: verification keeps some, rejects others
        plain = _engine(path, None)
        for rid, ids in prompts.items():
            plain.add_request(Request(rid, ids, params, 0, time.time()))
        outs: dict[str, list[int]] = {}
        while plain.has_unfinished_requests():
            for o in plain.step():
                outs.setdefault(str(o.key), []).extend(o.new_token_ids)
        follow = successors(outs, V)
    d = write_eagle3(tmp_path / "eagle", H, V, draft_vocab=48 if follow is None else None, aux_layers=[0, 1, 1],
                     follow=follow)
    engine = _engine(path, d)
    for rid, ids in prompts.items():  # 37 tokens: two chunks of the 24-token budget
        engine.add_request(Request(rid, ids, params, 0, time.time()))
    checked = 0
    while engine.has_unfinished_requests():
        engine.step()
        for req in engine.scheduler.running:
            state = req.draft_state
            if state is not None and state.proposed_at == len(req.all_token_ids):
                assert state.proposed == _reference_drafts(target, d, req.all_token_ids, 4), (req.key, checked)
                checked += 1
    stats = engine.stats()
    assert checked >= 12 and stats.draft_tokens > 0
    if follow is not None:
        assert 0 < stats.accepted_draft_tokens < stats.draft_tokens
