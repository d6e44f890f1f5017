"""Quantized checkpoints built from a dense one, and the served greedy tokens against transformers.

`write_checkpoint` quantizes every decoder linear of a dense HF directory with the tests' own
quantizer, packs it with a format's packer (written from that format's specification), and
writes the quantized checkpoint; the dense model with exactly the dequantized weights, in
float32, is what transformers runs as the reference.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file

from common.sampling_params import SamplingParams
from tests.worker.test_engine_model import _argmax_continuation, _engine, _run

# Every decoder linear a method quantizes: attention, dense MLPs, a shared expert's and each
# expert's projections (Qwen MoE's mlp.experts.E.*_proj, Mixtral's block_sparse_moe.experts.E.w1/w2/w3);
# the routers (mlp.gate, shared_expert_gate) stay dense.
LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn\.(q|k|v|o|qkv)_proj|mlp\.(shared_expert\.|experts\.\d+\.)?"
                    r"(gate|up|down|gate_up)_proj|block_sparse_moe\.experts\.\d+\.w[123])\.weight$")

Packer = Callable[[Any], dict[str, torch.Tensor]]  # a quantizer's output (rtn.Quantized, or anything with dequantized())


@dataclass
class Checkpoint:
    path: Path  # the quantized checkpoint
    source: Path  # the dense model it was made from
    dequantized: dict[str, torch.Tensor]  # the dense linears' weights as the checkpoint holds them, float32


def write_checkpoint(src: Path, root: Path, quantize: Callable[[torch.Tensor], Any], pack: Packer,
                     quantization_config: dict[str, Any], *, config_file: str = "config.json") -> Checkpoint:
    return write_quantized(src, root, lambda _name, weight: quantize(weight), pack, quantization_config,
                           config_file=config_file)


def write_quantized(src: Path, root: Path, quantize: Callable[[str, torch.Tensor], Any], pack: Packer,
                    quantization_config: dict[str, Any], *, config_file: str = "config.json") -> Checkpoint:
    """`write_checkpoint` for a quantizer that needs each linear's name (a calibrated one, whose
    results were computed beforehand): `quantize(name, weight)`."""
    state: dict[str, torch.Tensor] = {}
    for path in sorted(src.glob("*.safetensors")):
        state.update(load_file(path))
    packed: dict[str, torch.Tensor] = {}
    dense: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if LINEAR.match(name):
            quantized = quantize(name, tensor.float())
            prefix = name[: -len(".weight")]
            packed.update({f"{prefix}.{k}": v.contiguous() for k, v in pack(quantized).items()})
            dense[name] = quantized.dequantized()
        else:
            packed[name] = tensor
    out = root / "quantized"
    out.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    save_file(packed, out / "model.safetensors")
    if config_file == "config.json":
        config = json.loads((out / "config.json").read_text())
        config["quantization_config"] = quantization_config
        (out / "config.json").write_text(json.dumps(config))
    else:
        (out / config_file).write_text(json.dumps(quantization_config))
    return Checkpoint(out, src, dense)


def reference_model(source: Path, dequantized: dict[str, torch.Tensor]) -> transformers.PreTrainedModel:
    """transformers' float32 model of `source` holding the dequantized linears."""
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    if not set(dequantized) <= set(params):
        # Per-expert checkpoint names that transformers holds stacked: load a dequantized copy instead.
        state: dict[str, torch.Tensor] = {}
        for path in sorted(source.glob("*.safetensors")):
            state.update(load_file(path))
        copy = source.parent / f"{source.name}-dequantized"
        copy.mkdir(exist_ok=True)
        for f in source.iterdir():
            if f.is_file() and f.suffix != ".safetensors":
                shutil.copy(f, copy / f.name)
        save_file({**state, **dequantized}, copy / "model.safetensors")  # float32: exactly the served values
        return transformers.AutoModelForCausalLM.from_pretrained(copy, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, weight in dequantized.items():
            params[name].copy_(weight)
    return model


def on_the_fly(src: Path, dequantize: Callable[[torch.Tensor], torch.Tensor]) -> Checkpoint:
    """An on-the-fly method's case: the dense `src` is served (with --quantize), and the reference
    holds `dequantize(weight)` for each decoder linear (the tests' own quantizer, back to float32)."""
    state: dict[str, torch.Tensor] = {}
    for path in sorted(src.glob("*.safetensors")):
        state.update(load_file(path))
    return Checkpoint(src, src, {k: dequantize(v.float()) for k, v in state.items() if LINEAR.match(k)})


def tiny_model(root: Path, family: str = "llama", **overrides: Any) -> Path:
    """A random two-layer model of a family, with weights large enough that errors would show."""
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
        "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM),
        "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM),
    }[family]
    settings = dict(vocab_size=97, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**settings, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = root / f"dense-{family}"
    model.save_pretrained(path)
    return path


def random_prompts(n: int, vocab: int, seed: int = 1) -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(seed)
    return {f"p{i}": torch.randint(3, vocab, (int(torch.randint(4, 24, (1,), generator=g)),), generator=g).tolist()
            for i in range(n)}


def assert_served_greedy_equals_transformers(checkpoint: Checkpoint, prompts: dict[str, list[int]],
                                             new: int = 16, **worker: Any) -> None:
    engine = _engine(checkpoint.path, **worker)
    assert engine.runner.quant is not None, "the checkpoint did not load as quantized"
    got = _run(engine, prompts, SamplingParams(max_new_tokens=new, ignore_eos=True))
    model = reference_model(checkpoint.source, checkpoint.dequantized)
    for rid, ids in prompts.items():
        assert got[rid] == _argmax_continuation(model, ids, new), rid
