"""What structured generation costs on the host, on the default model's vocabulary (49,152 tokens).

- gateway check: `compile_grammar` (llguidance validation without a tokenizer), cold;
- worker compile: a matcher for a schema it has not seen (tokenizer built once beforehand), cold,
  and from the cache (a copy of the pristine matcher);
- mask: filling one request's bitmask at each token of a valid instance (the matcher then takes
  the instance's token), and `grammar_mask.apply` on one row; replay: a fresh matcher fed the whole
  instance, as a continuation on another worker does.

The schema has 60 properties (20 strings, 20 integers with bounds, 10 enums, 10 `$ref`s to two
`$defs` objects). Run: `python -m load.grammar_bench [--repeat N]`; the table goes to docs/perf.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

__all__ = ["schema_60", "instance_60", "main"]


def schema_60(salt: int = 0) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for i in range(20):
        props[f"name_{salt}_{i}"] = {"type": "string", "maxLength": 24}
        props[f"count_{i}"] = {"type": "integer", "minimum": 0, "maximum": 10_000}
    for i in range(10):
        props[f"kind_{i}"] = {"enum": ["alpha", "beta", "gamma", "delta"]}
        props[f"ref_{i}"] = {"$ref": "#/$defs/point" if i % 2 else "#/$defs/tag"}
    return {"type": "object", "properties": props, "required": list(props), "$defs": {
        "point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]},
        "tag": {"type": "object", "properties": {"label": {"type": "string", "maxLength": 16},
                                                 "weight": {"type": "integer"}}, "required": ["label", "weight"]}}}


def instance_60(schema: dict[str, Any]) -> str:
    value: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        if "$ref" in prop:
            value[name] = {"x": 1.5, "y": -2} if prop["$ref"].endswith("point") else {"label": "blue", "weight": 3}
        elif prop.get("type") == "string":
            value[name] = f"value {len(value)}"
        elif prop.get("type") == "integer":
            value[name] = len(value) * 37
        else:
            value[name] = prop["enum"][len(value) % 4]
    return json.dumps(value, separators=(", ", ": "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="cold compiles measured (distinct schemas)")
    args = parser.parse_args(argv)

    import torch

    from common.config import DEFAULT_MODEL_ID
    from common.model_source import resolve_model
    from gateway.grammar import GrammarSpec, compile_grammar
    from worker import grammar_mask
    from worker.grammar import GrammarCompiler

    model_dir = resolve_model(DEFAULT_MODEL_ID)
    started = time.perf_counter()
    compiler = GrammarCompiler(model_dir / "tokenizer.json", 49152, frozenset({2}))
    tok_init = time.perf_counter() - started
    check, cold, cached = [], [], []
    for k in range(args.repeat):
        schema = schema_60(salt=k)  # distinct property names: no cache anywhere helps
        t0 = time.perf_counter()
        grammar = compile_grammar(GrammarSpec.json_schema(schema))
        t1 = time.perf_counter()
        compiler.matcher(grammar, [])
        t2 = time.perf_counter()
        compiler.matcher(grammar, [])
        t3 = time.perf_counter()
        check.append(t1 - t0)
        cold.append(t2 - t1)
        cached.append(t3 - t2)
    schema = schema_60(salt=0)
    grammar = compile_grammar(GrammarSpec.json_schema(schema))
    ids = compiler.tokenizer.tokenize_str(instance_60(schema))
    matcher = compiler.matcher(grammar, [])
    fills, applies = [], []
    logits = torch.randn(1, 49152)  # (1, V)
    first_fill = 0.0
    for n, token in enumerate(ids):
        t0 = time.perf_counter()
        mask = grammar_mask.prepare([matcher], 49152, torch.device("cpu"))
        t1 = time.perf_counter()
        assert mask is not None
        grammar_mask.apply(logits, mask)
        t2 = time.perf_counter()
        if n == 0:
            first_fill = t1 - t0
        else:
            fills.append(t1 - t0)
        applies.append(t2 - t1)
        if not matcher.consume_token(token):
            raise SystemExit(f"the instance left the grammar at token {n}: {matcher.get_error()}")
    t0 = time.perf_counter()
    compiler.matcher(grammar, ids)
    replay = time.perf_counter() - t0
    ms = 1e3
    print(f"tokenizer init {tok_init:.2f} s; instance {len(ids)} tokens")
    print("| step | median | max |\n|---|---|---|")
    print(f"| gateway check (llguidance, no tokenizer), cold | {statistics.median(check) * ms:.1f} ms | {max(check) * ms:.1f} ms |")
    print(f"| worker compile, cold | {statistics.median(cold) * ms:.1f} ms | {max(cold) * ms:.1f} ms |")
    print(f"| worker compile, cached (copy) | {statistics.median(cached) * ms:.2f} ms | {max(cached) * ms:.2f} ms |")
    print(f"| first mask after compile | {first_fill * ms:.2f} ms | |")
    print(f"| mask fill per token (mean {statistics.mean(fills) * 1e6:.0f} µs) | {statistics.median(fills) * 1e6:.0f} µs | "
          f"{max(fills) * 1e6:.0f} µs |")
    print(f"| mask apply, one row of 49,152 (mean {statistics.mean(applies) * 1e6:.0f} µs) | "
          f"{statistics.median(applies) * 1e6:.0f} µs | {max(applies) * 1e6:.0f} µs |")
    print(f"| replay of the {len(ids)} tokens (a continuation) | {replay * ms:.2f} ms | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
