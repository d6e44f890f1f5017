"""AWQ's activation-aware search: per-input-channel scales and per-group clipping before 4-bit rounding.

Written from the paper's description (Lin et al., "AWQ: Activation-aware Weight Quantization for
LLM Compression and Acceleration", 2023). A few input channels of a linear carry most of the
activation energy; scaling those columns of W up by s (and the inputs down by s) before rounding
gives them a finer share of their group's grid. For inputs X and a scale s per input channel,

    X W^T = (X / s) (W * s)^T,   so the quantized layer computes (X / s) Q(W * s)^T

and the 1 / s folds into whatever produces X: the RMSNorm weight in front of q/k/v and of
gate/up, the rows of up_proj in front of down_proj (the function is unchanged until Q rounds).
The scales are s = mean|x|^a / mean|w|^(1 - a) (both per input channel, |w| relative to its
group's absmax), normalized so that sqrt(max(s) * min(s)) is one, with a searched on a grid in [0, 1).

The loss of a candidate is the output error over the calibration tokens, written with the
Hessian H = X^T X of the linear's inputs so no token is replayed: for D = W - Q(W * s) / s,
||X W^T - (X / s) Q(W * s)^T||^2 = tr(D H D^T). The scaled linears sharing an input (q, k, v;
gate, up) are searched together, their outputs concatenated. o_proj is not scaled where its
input is narrower than v_proj's output (grouped-query attention: one value head feeds several
query heads' columns), as AutoAWQ skips it.

The clip search then shrinks each group's range, |w| <= r * absmax, r on a grid down to
1 - MAX_SHRINK, keeping per (row, group) the r of least error on that group's block of H;
q_proj and k_proj are not clipped (their error is squared inside the attention scores, which
the linear's own output error does not see; AutoAWQ skips them for that reason).

The result is a dense model, the same function up to the clipping, whose 4-bit rounding (any
quantizer: round-to-nearest, or GPTQ after it) loses less: load/quantize_model.py `--awq`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from load.int_grid import fake_quantize

__all__ = ["search_scales", "search_clip", "awq_transform"]

GRID = 20  # candidates per search, AutoAWQ's n_grid
MAX_SHRINK = 0.5  # the clip search goes down to half of each group's absmax


def search_scales(w: torch.Tensor, hessian: torch.Tensor, x_abs_mean: torch.Tensor, group_size: int,
                  *, grid: int = GRID) -> tuple[torch.Tensor, float | None]:
    """Args:
        w: (N, K) the weights of the linears sharing the input, concatenated along N.
        hessian: (K, K) X^T X over the calibration inputs (any positive scale).
        x_abs_mean: (K,) mean |x| per input channel.
    Returns the scales s (K,) float32 and the chosen exponent a, or ones and None where no
    candidate beats the unscaled weights (the first candidate, so the search never loses)."""
    w64, h = w.double(), hessian.double()
    groups = w.abs().reshape(w.shape[0], -1, group_size)  # (N, NG, G)
    w_abs_mean = (groups / groups.amax(-1, keepdim=True).clamp(min=1e-12)).reshape(w.shape).mean(0)  # (K,)
    x_mean = x_abs_mean.double().clamp(min=1e-8)
    w_mean = w_abs_mean.double().clamp(min=1e-8)
    best: tuple[float, torch.Tensor, float | None] = (
        _output_error(w64, fake_quantize(w, group_size).double(), h), torch.ones_like(x_mean), None)
    for i in range(grid):
        a = i / grid
        s = x_mean**a / w_mean ** (1 - a)  # (K,)
        s = s / (s.max() * s.min()).sqrt()
        err = _output_error(w64, fake_quantize((w64 * s).float(), group_size).double() / s, h)
        if err < best[0]:
            best = (err, s, a)
    return best[1].float(), best[2]


def search_clip(w: torch.Tensor, hessian: torch.Tensor, group_size: int, *, grid: int = GRID,
                max_shrink: float = MAX_SHRINK) -> torch.Tensor:  # (N, K), (K, K) -> (N, NG) absmax bound
    """Per (row, group) the bound r * absmax of least output error; the error of group g is
    d_g H_gg d_g^T, H_gg its diagonal block (the cross terms between groups are left out, as
    a per-group choice cannot weigh them)."""
    n, k = w.shape
    ng = k // group_size
    wg = w.double().reshape(n, ng, group_size)  # (N, NG, G)
    blocks = torch.stack([hessian[j * group_size:(j + 1) * group_size, j * group_size:(j + 1) * group_size]
                          for j in range(ng)]).double()  # (NG, G, G)
    absmax = wg.abs().amax(-1)  # (N, NG)
    best_err = torch.full((n, ng), float("inf"), dtype=torch.float64)
    best_max = absmax.clone()
    for i in range(int(grid * max_shrink) + 1):
        bound = absmax * (1 - i / grid)  # (N, NG)
        clipped = torch.maximum(torch.minimum(wg, bound[..., None]), -bound[..., None])
        d = wg - fake_quantize(clipped.reshape(n, k).float(), group_size).double().reshape(n, ng, group_size)
        err = torch.einsum("ngi,gij,ngj->ng", d, blocks, d)  # (N, NG)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better, bound, best_max)
    return best_max.float()


def clip(w: torch.Tensor, bound: torch.Tensor, group_size: int) -> torch.Tensor:  # (N, K), (N, NG) -> (N, K)
    b = bound.repeat_interleave(group_size, dim=1)
    return torch.maximum(torch.minimum(w, b), -b)


# (scaled linears, the module whose output is their input, how that module takes 1 / s) per
# decoder layer of a Llama-family model.
_SCALED = (
    (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "input_layernorm", "norm"),
    (("self_attn.o_proj",), "self_attn.v_proj", "rows"),
    (("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm", "norm"),
    (("mlp.down_proj",), "mlp.up_proj", "rows"),
)
_NOT_CLIPPED = ("self_attn.q_proj", "self_attn.k_proj")


def awq_transform(model: nn.Module, input_ids: torch.Tensor, *, group_size: int = 64, clip_search: bool = True,
                  log: Callable[[str], None] | None = None) -> dict[str, float | None]:
    """Scales and clips every decoder layer of a float32 transformers Llama-family model in place,
    layer by layer on the calibration segments (S, T); each layer's inputs are the outputs of the
    layers before it as transformed. Returns the chosen exponent per scaled group
    ("layers.L.<first linear>"; None: left unscaled)."""
    from load.quantize_model import _inputs_of_first_layer, _layer_output

    hidden, kwargs = _inputs_of_first_layer(model, input_ids)  # (S, T, D)
    chosen: dict[str, float | None] = {}
    with torch.no_grad():
        for index, layer in enumerate(model.model.layers):
            stats = _input_statistics(layer, hidden, kwargs)
            for names, previous, kind in _SCALED:
                linears = [layer.get_submodule(n) for n in names]
                prev = layer.get_submodule(previous)
                if kind == "rows" and prev.weight.shape[0] != linears[0].weight.shape[1]:
                    continue  # GQA: v_proj's rows are fewer than o_proj's columns
                h, x_mean = stats[names[0]]
                s, a = search_scales(torch.cat([m.weight for m in linears]), h, x_mean, group_size)
                chosen[f"layers.{index}.{names[0]}"] = a
                for m in linears:
                    m.weight.mul_(s)  # columns
                if kind == "norm":
                    prev.weight.div_(s)
                else:
                    prev.weight.div_(s[:, None])  # rows
                    if getattr(prev, "bias", None) is not None:
                        prev.bias.div_(s)
                for n in names:  # the inputs as the linears now see them: x / s
                    h_n, m_n = stats[n]
                    stats[n] = (h_n / s[:, None] / s[None, :], m_n / s)
            if clip_search:
                for name, (h, _) in stats.items():
                    if name not in _NOT_CLIPPED:
                        m = layer.get_submodule(name)
                        m.weight.copy_(clip(m.weight, search_clip(m.weight, h, group_size), group_size))
            hidden = _layer_output(layer(hidden, **kwargs))
            if log is not None:
                log(f"layer {index} searched")
    return chosen


def _input_statistics(layer: nn.Module, hidden: torch.Tensor,
                      kwargs: dict[str, Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per linear of the layer: (X^T X (K, K) float64, mean |x| (K,)) over its inputs in one forward."""
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).double()  # (S * T, K)
            stats[name] = (x.t() @ x / x.shape[0], x.abs().mean(0))
        return hook

    names = [n for group, _, _ in _SCALED for n in group]
    handles = [layer.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        layer(hidden, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return stats


def _output_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    d = w - w_hat  # (N, K)
    return float(((d @ hessian) * d).sum())
