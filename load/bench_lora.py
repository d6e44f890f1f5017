"""Random PEFT adapters of a benchmark shape, for load/bench_gpu.py's `--lora` rows.

bench_gpu.py loads N of them (rank r, every decoder linear) into the runner and runs (b) 64 x
(128 in / 256 out) twice more: every row on one of the N adapters in turn (their steps run
eagerly: the decode graphs hold no adapters), and every row on the base with the adapters loaded
(what serving them costs requests that use none: the graphs still replay). Each row is reported
against (b) without adapters.

`python -m load.bench_lora [--device cpu]` is the same comparison on the default model without
a GPU: N requests spread over K adapters beside the same N on the base, in one process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_adapters", "main"]


def write_adapters(root: Path, cfg: dict[str, Any], count: int, rank: int) -> list[tuple[str, Path]]:
    """`count` random adapters of the shape `cfg` (config.json's fields): (id, directory) each."""
    import torch
    from safetensors.torch import save_file

    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    shapes = {"self_attn.q_proj": (hidden, q), "self_attn.k_proj": (hidden, kv), "self_attn.v_proj": (hidden, kv),
              "self_attn.o_proj": (q, hidden), "mlp.gate_proj": (hidden, inter), "mlp.up_proj": (hidden, inter),
              "mlp.down_proj": (inter, hidden)}
    made = []
    for n in range(count):
        gen = torch.Generator().manual_seed(n)
        tensors = {}
        for layer in range(cfg["num_hidden_layers"]):
            for module, (fan_in, fan_out) in shapes.items():
                name = f"base_model.model.model.layers.{layer}.{module}"
                tensors[f"{name}.lora_A.weight"] = torch.randn(rank, fan_in, generator=gen, dtype=torch.bfloat16) * 0.01
                tensors[f"{name}.lora_B.weight"] = torch.randn(fan_out, rank, generator=gen, dtype=torch.bfloat16) * 0.01
        directory = root / f"lora-{n}"
        directory.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(directory / "adapter_model.safetensors"))
        targets = sorted({m.rsplit(".", 1)[1] for m in shapes})
        (directory / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": targets, "bias": "none"}))
        made.append((f"lora-{n}", directory))
    return made


def main(argv: list[str] | None = None) -> int:
    """CPU (or any device) engine run: the default model, N requests spread over K random adapters
    beside the same N on the base, alternated `--rounds` times; prints out tok/s and the ratio."""
    import argparse
    import tempfile

    from common.config import DEFAULT_MODEL_ID, WorkerConfig
    from common.model_source import read_json_object, resolve_model
    from load.timed_runs import run_engine
    from worker.lora.peft import AdapterSpec
    from worker.model_runner import ModelRunner

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens per request")
    parser.add_argument("--new", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    model_dir = resolve_model(DEFAULT_MODEL_ID)
    config = WorkerConfig(device=args.device, max_batch_total_tokens=8192, max_batch_prefill_tokens=4096,
                          waiting_served_ratio=0.0, prefix_caching=False)
    runner = ModelRunner(config, model_dir)
    made = write_adapters(Path(tempfile.mkdtemp()), read_json_object(model_dir / "config.json"), args.adapters, args.rank)
    for adapter_id, directory in made:
        runner.adapters.load(AdapterSpec(adapter_id, str(directory)))  # type: ignore[union-attr]
    prompts = [[(7 * i + j) % 40000 + 100 for j in range(args.prompt)] for i in range(args.requests)]
    ids = tuple(a for a, _ in made)
    runs: dict[str, list[float]] = {"base": [], "lora": []}
    for _ in range(args.rounds):
        for name, adapters in (("base", ()), ("lora", ids)):
            runs[name].append(run_engine(runner, config, prompts, args.new, adapters=adapters)["tok_s"])
            print(f"{name}: {runs[name][-1]:.1f} out tok/s", flush=True)
    base, lora = max(runs["base"]), max(runs["lora"])
    print(f"{args.requests} requests ({args.prompt} in / {args.new} out) on {args.device}: base {base:.1f} out tok/s, "
          f"over {args.adapters} adapters (r={args.rank}, every linear) {lora:.1f} out tok/s = {lora / base:.2f}x "
          f"(best of {args.rounds} alternated rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
