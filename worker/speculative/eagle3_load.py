"""An EAGLE-3 checkpoint as published (e.g. yuhuili/EAGLE3-LLaMA3.1-Instruct-8B) and as vLLM and
SGLang read it: a directory with config.json and *.safetensors.

config.json is a Llama config of one layer (`num_hidden_layers: 1`) with `architectures:
["LlamaForCausalLMEagle3"]` (or the speculators library's eagle3 markers: common/model_source.py
`speculator_kind`), plus:
- `draft_vocab_size` (default: vocab_size): the rows of its LM head;
- `target_hidden_size` (default: hidden_size): the width of each fused target state;
- `eagle_aux_hidden_state_layer_ids` (top level or in `eagle_config`): the target layers whose
  input is fused, vLLM's convention (default: 2, L // 2, L - 3 of the target's L layers);
- `norm_before_residual` (default false): the residual is the normed state.
Tensors (a leading `model.` dropped; `layers.0.` is read as `midlayer.`): midlayer.self_attn.
{q,k,v,o}_proj.weight (q, k, v over 2 * hidden inputs), midlayer.mlp.{gate,up,down}_proj.weight,
midlayer.{input_layernorm,hidden_norm,post_attention_layernorm}.weight, fc.weight (hidden,
3 * target hidden), norm.weight, lm_head.weight (draft_vocab, hidden), d2t (draft_vocab,) integer
offsets (absent: draft id = target id, which needs draft_vocab = vocab), t2d (vocab,) bool (not
needed to draft: read for its shape only), embed_tokens.weight (absent: the target's is shared).

`--speculate N` sets the chain's length (default DEFAULT_DRAFTS): the draft has no fixed count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common.config import MAX_SPECULATE
from worker.models.config import ModelConfig
from worker.models.llama import LlamaForCausalLM
from worker.speculative.eagle3 import Eagle3Draft
from worker.speculative.heads import HeadTensors, SpeculatorError, register

__all__ = ["DEFAULT_DRAFTS"]

DEFAULT_DRAFTS = 3  # chain length without --speculate (vLLM's and SGLang's usual EAGLE-3 setting)
_LAYER = "midlayer."


def _num_drafts(raw: dict[str, Any], directory: Path) -> int:
    return MAX_SPECULATE  # any chain length up to --speculate's bound


def _default_drafts(raw: dict[str, Any], directory: Path) -> int:
    return DEFAULT_DRAFTS


def _load(directory: Path, raw: dict[str, Any], target: ModelConfig, k: int, dtype: torch.dtype,
          device: torch.device) -> Eagle3Draft:
    def fail(why: str) -> SpeculatorError:
        return SpeculatorError(f"EAGLE-3 draft in {directory}: {why}")

    layer_config = raw.get("transformer_layer_config")  # the speculators' layout nests the Llama part
    llama = {**raw, **layer_config} if isinstance(layer_config, dict) else raw
    try:
        cfg = ModelConfig.from_dict(llama, **LlamaForCausalLM.family(llama))  # attention_bias: q, k, v and o biases
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"config.json is not a Llama layer's config ({type(exc).__name__}: {exc})") from None
    if cfg.num_layers != 1:
        raise fail(f"config.json's num_hidden_layers is {cfg.num_layers}; EAGLE-3 drafts with one layer")
    hidden = cfg.hidden_size
    draft_vocab = _int(raw, "draft_vocab_size", cfg.vocab_size, fail)
    target_hidden = _int(raw, "target_hidden_size", hidden, fail)
    if cfg.vocab_size != target.vocab_size or target_hidden != target.hidden_size:
        raise fail(f"it drafts for a model of vocabulary {cfg.vocab_size} and hidden size {target_hidden}; this "
                   f"model has {target.vocab_size} and {target.hidden_size}")
    if not 0 < draft_vocab <= cfg.vocab_size:
        raise fail(f"draft_vocab_size {draft_vocab} must be in 1..vocab_size ({cfg.vocab_size})")
    aux = _aux_layers(raw, target.num_layers, fail)
    max_position = max(cfg.max_position_embeddings, target.max_position_embeddings) + MAX_SPECULATE + 1
    try:
        with torch.device("meta"):  # no random init: every parameter comes from the checkpoint
            draft = Eagle3Draft(cfg, target_hidden, aux, draft_vocab, k, bool(raw.get("norm_before_residual", False)),
                                max_position, device)
    except ValueError as exc:  # a rope scaling the rotary tables do not know
        raise fail(str(exc)) from None
    tensors = HeadTensors(sorted(directory.glob("*.safetensors")), "EAGLE-3")
    tensors.tensors = {_canonical(name): t for name, t in tensors.tensors.items()}
    attn = draft.self_attn
    q, kv, inter = attn.q_size, attn.kv_size, cfg.intermediate_size

    def take(name: str, *shape: int) -> torch.Tensor:
        return tensors.take(name, shape, dtype, device)

    qkv = [take(f"{_LAYER}self_attn.{p}_proj.weight", size, 2 * hidden) for p, size in (("q", q), ("k", kv), ("v", kv))]
    weights = {
        "self_attn.qkv_proj.weight": torch.cat(qkv),
        "self_attn.o_proj.weight": take(f"{_LAYER}self_attn.o_proj.weight", hidden, q),
        "mlp.gate_up_proj.weight": torch.cat([take(f"{_LAYER}mlp.gate_proj.weight", inter, hidden),
                                              take(f"{_LAYER}mlp.up_proj.weight", inter, hidden)]),
        "mlp.down_proj.weight": take(f"{_LAYER}mlp.down_proj.weight", hidden, inter),
        "fc.weight": take("fc.weight", hidden, len(aux) * target_hidden),
        "lm_head.weight": take("lm_head.weight", draft_vocab, hidden),
        "norm.weight": take("norm.weight", hidden),
    }
    for norm in ("input_layernorm", "hidden_norm", "post_attention_layernorm"):
        weights[f"{norm}.weight"] = take(f"{_LAYER}{norm}.weight", hidden)
    if cfg.qkv_bias:
        weights["self_attn.qkv_proj.bias"] = torch.cat(
            [take(f"{_LAYER}self_attn.{p}_proj.bias", size) for p, size in (("q", q), ("k", kv), ("v", kv))])
    if cfg.o_bias:
        weights["self_attn.o_proj.bias"] = take(f"{_LAYER}self_attn.o_proj.bias", hidden)
    for name, value in weights.items():
        module, _, leaf = name.rpartition(".")
        setattr(draft.get_submodule(module), leaf, torch.nn.Parameter(value, requires_grad=False))
    left = [name for name, p in draft.named_parameters() if p.is_meta]
    assert not left, f"EAGLE-3 parameters not loaded: {left}"
    if tensors.has("embed_tokens.weight"):
        draft.embed = take("embed_tokens.weight", cfg.vocab_size, hidden)
    elif hidden != target.hidden_size:
        raise fail(f"it has no embed_tokens.weight and its hidden size {hidden} is not the model's "
                   f"({target.hidden_size}), so it cannot share the model's embedding")
    draft.draft_to_target = _draft_to_target(tensors, draft_vocab, cfg.vocab_size, fail).to(device)
    t2d = tensors.tensors.get("t2d")
    if t2d is not None and tuple(t2d.shape) != (cfg.vocab_size,):
        raise fail(f"t2d has shape {tuple(t2d.shape)}, the vocabulary needs ({cfg.vocab_size},)")
    return draft


def _canonical(name: str) -> str:
    name = name.removeprefix("model.")
    return _LAYER + name.removeprefix("layers.0.") if name.startswith("layers.0.") else name


def _int(raw: dict[str, Any], key: str, default: int, fail: Any) -> int:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise fail(f"config.json's {key} must be an integer, got {value!r}")
    return value


def _aux_layers(raw: dict[str, Any], num_layers: int, fail: Any) -> tuple[int, ...]:
    eagle = raw.get("eagle_config") if isinstance(raw.get("eagle_config"), dict) else {}
    ids = raw.get("eagle_aux_hidden_state_layer_ids") or eagle.get("eagle_aux_hidden_state_layer_ids")
    if ids is None:
        ids = [2, num_layers // 2, num_layers - 3]
        where = f"the default layers for a model of {num_layers} ({ids})"
    else:
        where = f"eagle_aux_hidden_state_layer_ids {ids}"
    if (not isinstance(ids, list) or len(ids) != 3
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_layers for i in ids)):
        raise fail(f"{where}: the draft fuses three layers of the model, each in 0..{num_layers - 1}; "
                   f"set eagle_aux_hidden_state_layer_ids in its config.json")
    return tuple(ids)


def _draft_to_target(tensors: HeadTensors, draft_vocab: int, vocab: int, fail: Any) -> torch.Tensor:
    d2t = tensors.tensors.get("d2t")
    if d2t is None:
        if draft_vocab != vocab:
            raise fail(f"tensor 'd2t' is missing: a draft vocabulary of {draft_vocab} of {vocab} tokens needs the map")
        return torch.arange(vocab)
    if tuple(d2t.shape) != (draft_vocab,) or d2t.is_floating_point() or d2t.dtype == torch.bool:
        raise fail(f"d2t must be ({draft_vocab},) integer offsets, got {tuple(d2t.shape)} {d2t.dtype}")
    target = torch.arange(draft_vocab) + d2t.long()
    if int(target.min()) < 0 or int(target.max()) >= vocab:
        raise fail(f"d2t maps draft ids outside the vocabulary (0..{vocab - 1})")
    return target


register("eagle3", _num_drafts, _load, _default_drafts)
