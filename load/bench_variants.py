"""`--quantize` / `--variants` rows of load/bench_gpu.py, each setting in a process of its own.

A runner holds most of the card (its weights, a KV pool sized to what is free, the graphs' pools),
and part of that outlived `del` and a collection in the process that made it, so the next runner
of the same process ran out of memory. With variants asked for, bf16's rows and then each
variant's run in a fresh `python -m load.bench_gpu ... --variant-child SPEC`, one at a time; the
parent never touches the GPU. A child prints its result as one JSON line after RESULT_TAG, and
the parent joins the children's rows into one table, each variant row with its ratio to the bf16
child's row of the same workload.
"""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from load.roofline import Card, Floor, Row, roofline_flood, roofline_static, time_cuda
from load.shapes import SHAPES
from load.timed_runs import run_engine

__all__ = ["RESULT_TAG", "ChildFailed", "ChildSpec", "Result", "bench_in_children", "child_argv", "run_child",
           "replay_note", "variant_rows", "variants_of", "variant_setting", "with_ratios"]

RESULT_TAG = "variant-child-result: "
_ROOT = Path(__file__).resolve().parents[1]


@dataclass(slots=True)
class ChildSpec:
    shape: str  # a key of load/shapes.py's SHAPES
    variant: str  # "" = bf16 (bench_gpu's bench_model: every row of its flags); else SETTING=VALUE
    card: Card | None = None  # the bf16 child's measurement; None: the child measures the card

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ChildSpec:
        raw = json.loads(text)
        return cls(raw["shape"], raw["variant"], Card(**raw["card"]) if raw["card"] else None)


@dataclass(slots=True)
class Result:
    rows: list[Row]
    notes: list[str]
    tok_s: dict[str, float] = field(default_factory=dict)  # workload key ("a", "b", "c") -> its main row's tok/s
    kv_pool_tokens: int = 0
    card: Card | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Result:
        raw = json.loads(text)
        return cls([Row(**r) for r in raw["rows"]], raw["notes"], raw["tok_s"], raw["kv_pool_tokens"],
                    Card(**raw["card"]) if raw["card"] else None)


class ChildFailed(RuntimeError):
    pass


def variants_of(quantize: str, variants: str) -> list[str]:
    """--quantize M is short for --variants quantize=M; each is SETTING=VALUE of a WorkerConfig field."""
    from common.config import WorkerConfig

    out = [f"quantize={m}" for m in filter(None, quantize.split(","))] + list(filter(None, variants.split(",")))
    fields = {f.name for f in dataclasses.fields(WorkerConfig)}
    for variant in out:
        key, eq, value = variant.partition("=")
        if not eq or not value or key not in fields:
            raise SystemExit(f"--variants takes SETTING=VALUE with SETTING a WorkerConfig field "
                             f"(quantize, kv_cache_dtype, ...), got {variant!r}")
    return out


def variant_setting(variant: str) -> dict[str, Any]:
    """SETTING=VALUE as WorkerConfig keyword arguments: a bool field's VALUE read as true/false/1/0."""
    from common.config import WorkerConfig

    key, _, value = variant.partition("=")
    default = {f.name: f.default for f in dataclasses.fields(WorkerConfig)}[key]
    if not isinstance(default, bool):
        return {key: value}
    if value.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise SystemExit(f"--variants {key} takes true or false, got {value!r}")
    return {key: value.lower() in ("true", "1", "yes", "on")}


def replay_note(graphs: Any, size: int) -> str:
    """The GPU time of the batch-`size` decode graph replayed alone, and what the graph holds."""
    us = time_cuda(graphs.graphs[size, 1][0].replay, 20) * 1e6
    what = "forward, LM head and greedy argmax" if graphs.head is not None else "no LM head or sampling"
    return f"decode graph replay alone (batch {size}, {what}): {us:.0f} µs"


def child_argv(argv: list[str], spec: ChildSpec) -> list[str]:
    # The parent's own flags go along as they are (workloads, request count, engine settings); the
    # child takes its shape and setting from SPEC, not from --models, --quantize or --variants.
    return [sys.executable, "-m", "load.bench_gpu", *argv, "--variant-child", spec.to_json()]


def run_child(command: list[str], what: str) -> Result:
    """Runs one child to its end, passing its output through, and returns the result it printed."""
    proc = subprocess.Popen(command, cwd=_ROOT, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    result = None
    for line in proc.stdout:
        if line.startswith(RESULT_TAG):
            result = Result.from_json(line[len(RESULT_TAG):])
        else:
            print(line, end="", flush=True)
    code = proc.wait()
    if code != 0 or result is None:
        raise ChildFailed(f"{what}: the child exited with status {code}"
                          + ("" if result is not None else " before printing its rows"))
    return result


def with_ratios(result: Result, dense: Result) -> Result:
    """`result`'s rows with their ratio to bf16's row of the same workload first in the note."""
    rows = [replace(r, note=f"{r.out_tok_s / dense.tok_s[r.versus]:.2f}x bf16 ({r.versus}); {r.note}")
            if r.versus in dense.tok_s else r for r in result.rows]
    notes = list(result.notes)
    if result.kv_pool_tokens and dense.kv_pool_tokens:
        notes.append(f"KV pool {result.kv_pool_tokens} tokens: {result.kv_pool_tokens / dense.kv_pool_tokens:.2f}x "
                     f"bf16's {dense.kv_pool_tokens}")
    return replace(result, rows=rows, notes=notes)


def bench_in_children(shape: str, argv: list[str], variants: list[str]) -> tuple[list[Row], list[str]]:
    """bf16 and then each variant in a child of its own; one failed child leaves the others' rows."""
    rows: list[Row] = []
    notes: list[str] = []
    try:
        dense = run_child(child_argv(argv, ChildSpec(shape, "")), f"{shape} bf16")
    except ChildFailed as e:
        dense = Result([], [f"{e}: no bf16 rows to compare with"])
    rows += dense.rows
    notes += dense.notes
    for variant in variants:
        try:
            spec = ChildSpec(shape, variant, dense.card)
            result = with_ratios(run_child(child_argv(argv, spec), f"{shape} {variant}"), dense)
        except ChildFailed as e:
            notes.append(str(e))
            continue
        rows += result.rows
        notes += [f"{variant}: {n}" for n in result.notes]
    return rows, notes


def variant_rows(shape: str, model_dir: Path, dense_floor: Floor, config: Any, todo: set[str], requests: int,
                 label: str = "") -> Result:
    """(a), (b), (c) with one setting changed (`--quantize`, `--kv-cache-dtype`), each against its own
    floor: the weight and KV bytes the variant actually reads, scales included. Runs in a child."""
    from load.step_kernels import decode_kernels
    from worker.kv_cache import bytes_per_block
    from worker.model_runner import ModelRunner
    from worker.quant import int_kernels
    from worker.quant.experts import QuantExperts
    from worker.quant.w8 import w8_choices

    label = label or config.quantize or f"{config.kv_cache_dtype} KV"
    runner = ModelRunner(config, model_dir, load=False)
    quantized = [m for m in runner.model.modules() if hasattr(m, "packed_bytes")]
    # Expert stacks count per expert read (Floor.expert_bytes: one expert over all layers); the rest every step.
    stacks = [m for m in quantized if isinstance(m, QuantExperts)]
    linears = [m for m in quantized if not isinstance(m, QuantExperts)]
    dense_linear_bytes = 2 * sum(m.in_features * m.out_features for m in linears)
    cfg = SHAPES[shape]
    kv_token = bytes_per_block(cfg["num_hidden_layers"], 1, cfg["num_key_value_heads"], cfg["head_dim"], runner.kv_dtype)
    expert_bytes = sum(m.packed_bytes() for m in stacks) // stacks[0].num_experts if stacks else dense_floor.expert_bytes
    floor = replace(dense_floor, weight_bytes=dense_floor.weight_bytes - dense_linear_bytes
                    + sum(m.packed_bytes() for m in linears), kv_bytes_per_token=kv_token, expert_bytes=expert_bytes)
    rng = random.Random(1)
    vocab = cfg["vocab_size"]

    def prompts(n: int, length: int) -> list[list[int]]:
        return [[rng.randrange(100, vocab) for _ in range(length)] for _ in range(n)]

    run_engine(runner, config, prompts(2, 128), 8)  # warm-up
    rows = []
    tok_s: dict[str, float] = {}
    capacity = runner.num_blocks * runner.block_size
    for key, batch in (("a", 1), ("b", 64)):
        if key in todo:
            r = run_engine(runner, config, prompts(batch, 128), 256)
            tok_s[key] = r["tok_s"]
            rows.append(Row(shape, f"({key}) {label}: {'batch 1' if batch == 1 else '64 x'} (128 in / 256 out)",
                            r["tok_s"], roofline_static(floor, batch, 128, 256), None,
                            f"TPOT p50 {r['tpot_p50'] * 1e3:.2f} ms", versus=key))
    if "c" in todo:
        r = run_engine(runner, config, prompts(requests, 1024), 128)
        tok_s["c"] = r["tok_s"]
        rows.append(Row(shape, f"(c) {label}: {requests} x (1024 in / 128 out) at t=0", r["tok_s"],
                        roofline_flood(floor, requests, 1024, 128, capacity), None,
                        f"{r['seconds']:.1f}s, {r['preemptions']} preemptions, TTFT p50 {r['ttft_p50']:.2f}s",
                        versus="c"))
    notes = [f"{shape} {label}: {floor.weight_bytes / 1e9:.2f} GB weights read per decode step "
             f"(bf16: {dense_floor.weight_bytes / 1e9:.2f} GB), {kv_token} KV bytes per token "
             f"(bf16: {dense_floor.kv_bytes_per_token}); floor per decode step at batch 1 "
             f"{floor.decode_step([256]) * 1e6:.0f} µs"
             + (f"; one expert over all layers {floor.expert_bytes / 1e9:.2f} GB (bf16: {dense_floor.expert_bytes / 1e9:.2f})"
                if stacks else "")]
    if runner.graphs is not None:
        for size in (1, 64):
            if (size, 1) in runner.graphs.graphs and ("a" if size == 1 else "b") in todo:
                notes.append(f"{shape} {label}: {replay_note(runner.graphs, size)}")
    for key, batch in (("a", 1), ("b", 64)):
        if key in todo:
            notes.append(f"{shape} {label}: " + decode_kernels(runner, config, prompts(batch, 128), 32))
    if config.quantize:
        picked = {**int_kernels.choices(), **w8_choices()}
        notes.append(f"{shape} {label} kernel choices: " + "; ".join(f"{k}: {v}" for k, v in picked.items()))
    return Result(rows, notes, tok_s, capacity)
