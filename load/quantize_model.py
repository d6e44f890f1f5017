"""A 4-bit checkpoint of a dense model, in AutoAWQ's or GPTQ's layout, calibrated on a shipped text.

`--method gptq` (load/gptq.py) quantizes the decoder one layer at a time, as the paper does: the
calibration text's hidden states enter layer l as the already quantized layers 0..l-1 leave them;
within a layer the linears are quantized in the order the data meets them (q/k/v, then o with
inputs from the quantized q/k/v, then gate/up, then down), each from the Hessian 2 X^T X of its
own inputs. `--method rtn` is round-to-nearest min-max (the tests' tests/worker/quant/rtn.py),
the baseline. `--awq` first runs AWQ's activation-aware scale and clip search (load/awq_search.py)
on the calibration text and writes the transformed dense model (OUT_DIR/awq_dense: the scales
folded into the norms and up_proj), which either quantizer then rounds; `--awq --method rtn` is
AutoAWQ's own recipe. The result is packed by the tests' packers (AutoAWQ GEMM or GPTQ v2, groups
contiguous) and served by the worker with `--quantize awq` / `gptq`; load/perplexity.py measures it.

The calibration text is not the evaluation text: load/texts/federalist_1_to_5.txt (The Federalist
Nos. 1-5, public domain, Project Gutenberg etext 1404, paragraphs unwrapped) against
load/perplexity.py's declaration_of_independence.txt.

    python -m load.quantize_model MODEL_DIR OUT_DIR                       # GPTQ, AWQ layout, group 64
    python -m load.quantize_model MODEL_DIR OUT_DIR --method rtn
    python -m load.quantize_model MODEL_DIR OUT_DIR --awq --method rtn       # AWQ (scales + clip)
    python -m load.quantize_model MODEL_DIR OUT_DIR --awq                    # AWQ, then GPTQ
    python -m load.quantize_model MODEL_DIR OUT_DIR --format gptq --no-act-order
    python -m load.perplexity OUT_DIR/quantized --quantize awq
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["CALIBRATION_TEXT", "SEQUENTIAL_GROUPS", "awq_dense", "calibrated_gptq", "quantize_model"]

CALIBRATION_TEXT = Path(__file__).resolve().parent / "texts" / "federalist_1_to_5.txt"

# The linears of a Llama-family decoder layer in the order the data reaches them; each group's
# Hessians are taken with the groups before it already quantized.
SEQUENTIAL_GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                     ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


def calibrated_gptq(model: nn.Module, input_ids: torch.Tensor, *, group_size: int = 64, act_order: bool = False,
                    damp: float = 0.01, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """GPTQ over every decoder linear of a transformers causal LM, layer by layer.

    Args:
        model: a float32 transformers Llama-family model; its linears are left holding the
            dequantized weights.
        input_ids: (S, T) calibration segments.
    Returns: {checkpoint weight name: rtn.Quantized}."""
    from load.gptq import gptq_quantize

    layers = model.model.layers
    hidden, kwargs = _inputs_of_first_layer(model, input_ids)  # (S, T, D)
    results: dict[str, Any] = {}
    with torch.no_grad():
        for index, layer in enumerate(layers):
            for group in SEQUENTIAL_GROUPS:
                linears = {name: layer.get_submodule(name) for name in group}
                hessians = _hessians(layer, linears, hidden, kwargs)
                for name, linear in linears.items():
                    quantized = gptq_quantize(linear.weight, hessians[name], group_size=group_size,
                                              act_order=act_order, damp=damp)
                    linear.weight.copy_(quantized.dequantized())
                    results[f"model.layers.{index}.{name}.weight"] = quantized
            hidden = _layer_output(layer(hidden, **kwargs))
            if log is not None:
                log(f"layer {index} quantized")
    return results


def quantize_model(model_dir: Path, out_dir: Path, *, method: str = "gptq", layout: str = "awq",
                   group_size: int = 64, act_order: bool = True, awq: bool = False, clip: bool = True,
                   text: Path = CALIBRATION_TEXT, seq_len: int = 512, max_tokens: int = 4096) -> Path:
    """Writes out_dir/quantized (the packed checkpoint), and with `awq` out_dir/awq_dense; returns
    the quantized checkpoint's path."""
    import transformers

    from tests.worker.quant.harness import write_quantized
    from tests.worker.quant.rtn import quantize
    from tests.worker.quant.test_awq import awq_config, pack_awq
    from tests.worker.quant.test_gptq import gptq_config, pack_gptq

    pack, config = {
        "awq": (pack_awq, awq_config(group_size)),
        "gptq": (lambda qz: pack_gptq(qz, 2), gptq_config(4, group_size, False, False, 2)),
    }[layout]
    if method not in ("rtn", "gptq"):
        raise ValueError(f"method {method!r}: gptq or rtn")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    ids = torch.tensor(tokenizer(text.read_text()).input_ids[:max_tokens])
    segments = ids[: len(ids) // seq_len * seq_len].reshape(-1, seq_len)  # (S, T)
    start = time.perf_counter()
    log = lambda m: print(f"{time.perf_counter() - start:6.1f} s  {m}", file=sys.stderr)  # noqa: E731
    out_dir.mkdir(parents=True, exist_ok=True)
    if awq:
        model_dir = awq_dense(model_dir, out_dir / "awq_dense", segments, group_size, log, clip=clip)
    quantizer: Callable[[str, torch.Tensor], Any]
    if method == "rtn":
        quantizer = lambda _name, w: quantize(w, 4, group_size, sym=False)  # noqa: E731
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        results = calibrated_gptq(model, segments, group_size=group_size, act_order=act_order, log=log)
        del model
        quantizer = lambda name, _w: results.pop(name)  # noqa: E731
    if (out_dir / "quantized").exists():
        shutil.rmtree(out_dir / "quantized")
    return write_quantized(model_dir, out_dir, quantizer, pack, config).path


def awq_dense(model_dir: Path, out: Path, segments: torch.Tensor, group_size: int = 64,
              log: Callable[[str], None] | None = None, *, clip: bool = True) -> Path:
    """The AWQ-transformed dense checkpoint: the source's files, its tensors as the search left them."""
    import transformers
    from safetensors.torch import load_file, save_file

    from load.awq_search import awq_transform

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    awq_transform(model, segments, group_size=group_size, clip_search=clip, log=log)
    transformed = model.state_dict()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in model_dir.iterdir():  # config, tokenizer; not the tensors nor a shard index
        if f.is_file() and f.suffix != ".safetensors" and not f.name.endswith(".safetensors.index.json"):
            shutil.copy(f, out / f.name)
    state: dict[str, torch.Tensor] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(path))
    # The source's own names and dtypes: a tied lm_head stays absent.
    save_file({name: transformed[name].to(t.dtype).contiguous() for name, t in state.items()}, out / "model.safetensors")
    return out


def _inputs_of_first_layer(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """The hidden states and keyword arguments (rotary embeddings, mask) the first decoder layer
    receives, caught by a hook that ends the forward there."""
    caught: dict[str, Any] = {}

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        caught["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        caught["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Caught

    handle = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids, use_cache=False)
    except _Caught:
        pass
    finally:
        handle.remove()
    return caught["hidden"], caught["kwargs"]


def _hessians(layer: nn.Module, linears: dict[str, nn.Module], hidden: torch.Tensor,
              kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """2 X^T X / rows of each linear's inputs, from a forward of the layer that stops once every
    one of them has seen its input (the rest of the layer is not needed for these)."""
    hessians: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])  # (S * T, K)
            hessians[name] = (2 * (x.t() @ x) / x.shape[0]).double()
            if len(hessians) == len(linears):
                raise _Caught
        return hook

    handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in linears.items()]
    try:
        layer(hidden, **kwargs)
    except _Caught:
        pass
    finally:
        for h in handles:
            h.remove()
    return hessians


class _Caught(Exception):
    """Ends a forward early, from a hook that has what it came for."""


def _layer_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--method", choices=["gptq", "rtn"], default="gptq")
    parser.add_argument("--format", dest="layout", choices=["awq", "gptq"], default="awq")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--no-act-order", dest="act_order", action="store_false",
                        help="visit the columns in their order (act order, the default, measured better)")
    parser.add_argument("--awq", action="store_true",
                        help="AWQ's activation-aware scale and clip search before the quantizer (load/awq_search.py)")
    parser.add_argument("--no-clip", dest="clip", action="store_false", help="with --awq: the scale search alone")
    parser.add_argument("--text", type=Path, default=CALIBRATION_TEXT)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=4096)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = quantize_model(args.model_dir, args.out_dir, method=args.method, layout=args.layout,
                          group_size=args.group_size, act_order=args.act_order, awq=args.awq, clip=args.clip,
                          text=args.text, seq_len=args.seq_len, max_tokens=args.max_tokens)
    print(f"{path}: {'awq + ' if args.awq else ''}{args.method}, {args.layout} layout, group {args.group_size}"
          f"{', act order' if args.act_order else ''}, {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
