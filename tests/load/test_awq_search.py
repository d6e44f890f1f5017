"""load/awq_search.py: AWQ's scale and clip searches against round-to-nearest, and the transformed
model it writes (the same function before rounding; served exactly once packed)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from load.awq_search import awq_transform, clip, search_clip, search_scales
from load.gptq import layer_error
from load.int_grid import fake_quantize
from load.quantize_model import awq_dense
from tests.worker.quant.harness import LINEAR, assert_served_greedy_equals_transformers, random_prompts, tiny_model, write_quantized
from tests.worker.quant.rtn import quantize
from tests.worker.quant.test_awq import awq_config, pack_awq


def _inputs_with_hot_channels(rows: int, k: int, tokens_seed: int = 0) -> torch.Tensor:  # (rows, K)
    g = torch.Generator().manual_seed(0)
    size = torch.rand(k, generator=g) + 0.5
    size[torch.randperm(k, generator=g)[:4]] *= 40  # a few channels carry most of the energy, as in LLMs
    return torch.randn(rows, k, generator=torch.Generator().manual_seed(100 + tokens_seed)) * size


def test_scales_cut_the_output_error_below_round_to_nearest() -> None:
    w = torch.randn(96, 256, generator=torch.Generator().manual_seed(2)) * 0.05  # (N, K)
    x = _inputs_with_hot_channels(2048, 256)
    s, a = search_scales(w, x.t() @ x, x.abs().mean(0), 64)
    assert a is not None and s.shape == (256,)
    awq = fake_quantize(w * s, 64) / s  # (N, K) what the layer computes, in the unscaled input's terms
    held_out = _inputs_with_hot_channels(2048, 256, tokens_seed=1)
    for inputs in (x, held_out):
        rtn = layer_error(w, fake_quantize(w, 64), inputs)
        assert layer_error(w, awq, inputs) < 0.5 * rtn, (layer_error(w, awq, inputs), rtn)


def test_scales_never_lose_to_the_unscaled_weights() -> None:
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(3))
    x = torch.randn(512, 128, generator=torch.Generator().manual_seed(4))  # no channel stands out
    s, a = search_scales(w, x.t() @ x, x.abs().mean(0), 64)
    err = layer_error(w, fake_quantize(w * s, 64) / s, x)
    assert err <= layer_error(w, fake_quantize(w, 64), x) * (1 + 1e-9)
    assert a is not None or torch.equal(s, torch.ones(128))


def test_clip_search_lowers_the_output_error() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1024, 128, generator=g)
    w = torch.randn(64, 128, generator=g)
    bound = search_clip(w, x.t() @ x, 64)  # (N, NG)
    absmax = w.abs().reshape(64, 2, 64).amax(-1)
    assert torch.all(bound <= absmax) and torch.all(bound >= 0.5 * absmax * (1 - 1e-6))
    assert bool((bound < absmax).any())  # some groups are clipped
    clipped = fake_quantize(clip(w, bound, 64), 64)
    assert layer_error(w, clipped, x) < 0.95 * layer_error(w, fake_quantize(w, 64), x)  # 0.93 measured


def _logits(model: transformers.PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits  # type: ignore[no-any-return]


def test_scales_fold_into_the_model_without_changing_its_function(tmp_path: Path) -> None:
    # Four KV heads: o_proj's input is v_proj's output, so that pair is scaled too.
    dense = tiny_model(tmp_path, num_key_value_heads=4)
    model = transformers.AutoModelForCausalLM.from_pretrained(dense, dtype=torch.float32).eval()
    ids = torch.randint(3, 97, (2, 40), generator=torch.Generator().manual_seed(6))
    before = _logits(model, ids)
    takes = {"self_attn.q_proj": "input_layernorm", "self_attn.o_proj": "self_attn.v_proj",
             "mlp.gate_proj": "post_attention_layernorm", "mlp.down_proj": "mlp.up_proj"}
    original = {k: v.clone() for k, v in model.state_dict().items()}
    chosen = awq_transform(model, ids, group_size=64, clip_search=False)
    assert set(chosen) == {f"layers.{i}.{n}" for i in range(2) for n in takes}
    assert sum(a is not None for a in chosen.values()) >= 4  # 7 of the 8 groups are scaled, measured
    state = model.state_dict()
    for group, a in chosen.items():  # a norm in front of a scaled group took 1 / s
        layer, name = group.split(".", 2)[1:]
        key = f"model.layers.{layer}.{takes[name]}.weight"
        if "norm" in key:
            assert torch.equal(state[key], original[key]) == (a is None), group
    # The row folds (v_proj for o_proj, up_proj for down_proj) are checked by the function alone.
    assert chosen["layers.1.self_attn.o_proj"] is not None and chosen["layers.1.mlp.down_proj"] is not None
    torch.testing.assert_close(_logits(model, ids), before, rtol=1e-4, atol=1e-4)


def test_awq_checkpoint_serves_its_dequantized_weights(tmp_path: Path) -> None:
    dense = tiny_model(tmp_path)  # two KV heads: o_proj is left unscaled
    calibration = torch.randint(3, 97, (2, 48), generator=torch.Generator().manual_seed(3))  # (S, T)
    transformed = awq_dense(dense, tmp_path / "awq_dense", calibration, 64)
    ckpt = write_quantized(transformed, tmp_path, lambda _name, w: quantize(w, 4, 64, sym=False), pack_awq, awq_config(64))
    assert set(ckpt.dequantized) == {n for n in transformers.AutoModelForCausalLM.from_pretrained(dense).state_dict()
                                     if LINEAR.match(n)}
    assert_served_greedy_equals_transformers(ckpt, random_prompts(2, 97), new=8, quantize="awq")
