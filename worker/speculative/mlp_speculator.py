"""IBM's MLP speculator (Wertheimer et al., arXiv 2404.19124; `MLPSpeculatorPreTrainedModel`), as
TGI and vLLM load it: a directory of its own with config.json (`model_type: mlp_speculator`,
n_predict, emb_dim, inner_dim, vocab_size, tie_weights, scale_input) and *.safetensors.

Head i is a step of a small recurrent chain. Its state starts as the target's final hidden state
of the position that sampled token t (RMS-normalised and divided by sqrt 2 with scale_input); then
    state = GELU(LN_i(proj_i(state) + emb_i(token) * emb_weight / state_weight))
    draft_i = argmax(head_i(state)), and token = draft_i for head i + 1,
where LN_i normalises by the root mean square and applies a weight and a bias. The weights
state_weight = 0.5 ** (0.5 / n_predict) and emb_weight = sqrt((1 - state_weight²) · inner_dim / 2)
come from the trained n_predict (vLLM's choice; TGI recomputes them from --speculate), so the first
N heads behave as they were trained. Tensors: emb.i.weight (V, D), proj.i.weight (D, emb_dim for
i = 0, else D), head.i.weight (V, D), ln.i.weight and ln.i.bias (D,); with tie_weights every emb,
head and ln is the first one's, and proj.i for i >= 2 is proj.1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from worker.speculative.heads import HeadTensors, SpeculatorError, register

if TYPE_CHECKING:
    from worker.models import CausalLM, ModelConfig

__all__ = ["MLPSpeculator"]

_EPS = 1e-6  # the layer norms' epsilon (IBM's LayerNormParameterized default)


class MLPSpeculator:
    method = "mlp_speculator"

    def __init__(self, emb: list[torch.Tensor], proj: list[torch.Tensor], head: list[torch.Tensor],
                 ln: list[tuple[torch.Tensor, torch.Tensor]], n_predict: int, scale_input: bool) -> None:
        self.emb, self.proj, self.head, self.ln = emb, proj, head, ln  # per head, model dtype, device
        self.num_heads = len(emb)
        self.scale_input = scale_input
        inner_dim = emb[0].shape[1]
        self.state_weight = 0.5 ** (0.5 / n_predict)
        self.emb_weight = math.sqrt((1 - self.state_weight**2) * (inner_dim / 2))

    def propose(self, hidden: torch.Tensor, token_ids: torch.Tensor, model: CausalLM) -> torch.Tensor:
        state = _rms(hidden) / math.sqrt(2) if self.scale_input else hidden  # (P, emb_dim)
        token = token_ids  # (P,)
        drafts = []
        for i in range(self.num_heads):
            state = F.linear(state, self.proj[i])  # (P, D)
            state = state + self.emb[i][token] * (self.emb_weight / self.state_weight)
            weight, bias = self.ln[i]
            state = F.gelu(_rms(state) * weight + bias)
            token = F.linear(state, self.head[i]).argmax(dim=-1)  # (P,)
            drafts.append(token)
        return torch.stack(drafts, dim=1)  # (P, K) int64


def _rms(x: torch.Tensor) -> torch.Tensor:
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + _EPS)).to(x.dtype)


def _positive_int(raw: dict[str, Any], key: str, directory: Path, default: int | None = None) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SpeculatorError(f"MLP speculator in {directory}: config.json's {key} must be an integer >= 0, got {value!r}")
    return value


def _num_heads(raw: dict[str, Any], directory: Path) -> int:
    n = _positive_int(raw, "n_predict", directory)
    if n < 1:
        raise SpeculatorError(f"MLP speculator in {directory}: config.json's n_predict must be >= 1")
    return n


def _load(directory: Path, raw: dict[str, Any], target: ModelConfig, k: int, dtype: torch.dtype,
          device: torch.device) -> MLPSpeculator:
    n_predict = _num_heads(raw, directory)
    emb_dim = _positive_int(raw, "emb_dim", directory)
    inner = _positive_int(raw, "inner_dim", directory, 0) or emb_dim
    vocab = _positive_int(raw, "vocab_size", directory)
    tied = bool(raw.get("tie_weights", False))
    if emb_dim != target.hidden_size or vocab != target.vocab_size:
        raise SpeculatorError(
            f"MLP speculator in {directory} is for a model of hidden size {emb_dim} and vocabulary {vocab}; "
            f"this model has {target.hidden_size} and {target.vocab_size}"
        )
    if tied and n_predict < 2:
        raise SpeculatorError(f"MLP speculator in {directory}: tie_weights needs n_predict >= 2, got {n_predict}")
    tensors = HeadTensors(sorted(p for p in directory.glob("*.safetensors")), "MLP speculator")

    def take(name: str, i: int, shape: tuple[int, ...]) -> torch.Tensor:
        return tensors.take(f"{name}.{i}.weight" if name != "ln.bias" else f"ln.{i}.bias", shape, dtype, device)

    def shared(i: int) -> int:  # the head whose emb, head and ln head i uses
        return 0 if tied else i

    emb = [take("emb", shared(i), (vocab, inner)) for i in range(k)]
    proj = [take("proj", min(i, 1) if tied else i, (inner, emb_dim if i == 0 else inner)) for i in range(k)]
    head = [take("head", shared(i), (vocab, inner)) for i in range(k)]
    ln = [(take("ln", shared(i), (inner,)), take("ln.bias", shared(i), (inner,))) for i in range(k)]
    return MLPSpeculator(emb, proj, head, ln, n_predict, bool(raw.get("scale_input", False)))


register("mlp_speculator", _num_heads, _load)
