"""One-GPU benchmark: genfleet's engine beside the card's roofline and transformers `generate`.

In one run: the card's copy bandwidth and bf16 GEMM rate; random-weight bf16 models of the
Llama-3.1-8B and SmolLM2-135M shapes; (a) batch 1, 128 in / 256 out; (b) 64 x (128 in, 256 out)
at once; (c) N requests of random 1024 in / 128 out, all at t=0, through the engine; (e)
transformers `generate` on (a) and (b); (d) the same flood as (c) through the whole fleet path
(`genfleet serve` with a random-weight worker, HTTP + SSE on loopback; needs a tokenizer
directory, since the gateway tokenizes text). Prints one markdown table with each figure's ratio to
the roofline (decode: weight + KV bytes over measured bandwidth; prefill: FLOPs over measured
GEMM rate) and to the baseline, then a per-kernel breakdown of one decode step.

    python -m load.bench_gpu                       # everything, < 10 minutes on an H100
    python -m load.bench_gpu --models smollm2 --requests 200 --no-baseline
    python -m load.bench_gpu --tokenizer-dir DIR   # adds (d), the fleet path
    python -m load.bench_gpu --watermark           # adds (b) greedy and sampled with the watermark on
    python -m load.bench_gpu --models 8b --no-baseline --workloads b --grammar --tokenizer-dir DIR
                                                   # adds (b) greedy with and without a JSON-schema grammar,
                                                   # and guided one step at a time (no overlap)
    python -m load.bench_gpu --speculate 4         # adds (a), (b) with n-gram --speculate 4 beside the same
                                                   # without, and one batch-1 verification step's cost
                                                   # over a plain decode step
    python -m load.bench_gpu --speculate 4 --speculator medusa   # and with random Medusa heads (overhead only)
    python -m load.bench_gpu --models 8b --speculate 4 --speculator eagle3
                                                   # and with a random EAGLE-3 draft of the 8B shape (its
                                                   # own runner: the draft's KV beside the model's)
    python -m load.bench_gpu --lora 4 --lora-rank 16
                                                   # adds (b) with its 64 rows spread over 4 random LoRA
                                                   # adapters, and (b) on the base with them loaded
    python -m load.bench_gpu --models 8b --variants quantize=fp8,kv_cache_dtype=fp8_e4m3fn
                                                   # (a), (b), (c) again per variant, beside bf16
                                                   # (bf16 and each variant in a process of its own:
                                                   # load/bench_variants.py)
    python -m load.bench_gpu --models mixtral --workloads a,b --requests 200
                                                   # Mixtral-8x7B's shape (93 GB): (a), (b) against the
                                                   # bytes of the experts a step reads, and the fused MoE
                                                   # kernel against a per-expert loop of torch matmuls
                                                   # (and its FP8 and int4 variants, one layer)
    python -m load.bench_gpu --models mixtral --no-baseline --workloads a,b --variants quantize=fp8,quantize=awq
                                                   # and (a), (b) with FP8 / random int4 experts and
                                                   # linears, against the bytes a step reads
    python -m load.bench_gpu --models 8b --num-shard 1,2,4 --workloads none
                                                   # (a), (b) per rank count, all-reduce share (load/bench_shards.py)
    python -m load.bench_gpu --models mixtral --num-shard 2,4 --workloads none
                                                   # the same for Mixtral's experts, split inside each
                                                   # expert (one all-reduce per MoE block)
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from load.bench_shards import shard_rows
from load.bench_variants import (RESULT_TAG, ChildSpec, Result, bench_in_children, replay_note, variant_rows,
                                 variant_setting, variants_of)
from load.mixed_step_probe import mixed_step_probe
from load.roofline import Card, Row, floor_for, markdown_table, measure_card, roofline_flood, roofline_static
from load.shapes import ALIASES, SHAPES, write_model_dir
from load.timed_runs import hf_generate, release_memory, run_engine

__all__ = ["build_parser", "guided_schema", "main"]


def _engine_config(args: argparse.Namespace, model_dir: Path) -> Any:
    from common.config import FleetConfig, WorkerConfig

    # The model is `model_dir`, as a worker's --model-id would say (its speculator heads are looked up there).
    return WorkerConfig(fleet=FleetConfig(model_id=str(model_dir)), device="cuda", dtype="bfloat16",
                        max_batch_prefill_tokens=args.prefill_tokens, max_batch_size=args.max_batch_size,
                        prefix_caching=False, cuda_graphs=args.cuda_graphs)


def guided_schema() -> dict[str, Any]:
    """The JSON schema of the guided rows: no row finishes it in 256 tokens."""
    item = {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
                                             "tag": {"enum": ["a", "b", "c"]}}, "required": ["id", "tag"]}
    return {"type": "object", "properties": {"rows": {"type": "array", "minItems": 200, "items": item}}, "required": ["rows"]}


def _guided(args: argparse.Namespace, runner: Any) -> tuple[Any, str]:
    """A grammar compiler on --tokenizer-dir's vocabulary and guided_schema's grammar."""
    from gateway.grammar import GrammarSpec, compile_grammar
    from worker.grammar import GrammarCompiler

    if args.tokenizer_dir is None:
        raise SystemExit("--grammar needs --tokenizer-dir (a tokenizer.json no larger than the model's vocabulary)")
    from transformers import AutoTokenizer

    # The tokenizer's own end token: the random model's (128001) lies past a smaller tokenizer's vocabulary.
    eos = AutoTokenizer.from_pretrained(args.tokenizer_dir).eos_token_id
    compiler = GrammarCompiler(args.tokenizer_dir / "tokenizer.json", runner.vocab_size,
                               frozenset([eos] if eos is not None else []))
    return compiler, compile_grammar(GrammarSpec.json_schema(guided_schema()))


def bench_model(shape: str, root: Path, card: Card, args: argparse.Namespace) -> Result:
    import torch

    from genfleet_kernels.bench import decode_step_breakdown
    from worker.model_runner import ModelRunner

    model_dir = write_model_dir(root, shape, args.tokenizer_dir)
    cfg = SHAPES[shape]
    floor = floor_for(cfg, card)
    notes: list[str] = []
    base_a = base_b = None
    if not args.no_baseline and not cfg.get("num_local_experts"):  # transformers' MoE loop: hours at this size
        base_a = hf_generate(model_dir, 1, 128, 256)
        base_b = hf_generate(model_dir, 64, 128, 256)
    config = _engine_config(args, model_dir)
    started = time.perf_counter()
    # With --speculate the runner captures its verification graphs too; the rows without it
    # keep `config` (no drafting), so they are the plain engine's.
    runner = ModelRunner(replace(config, speculate=args.speculate) if args.speculate else config, model_dir, load=False)
    graphs = runner.graphs
    notes.append(
        f"{shape}: runner ready in {time.perf_counter() - started:.1f}s; KV pool {runner.num_blocks * runner.block_size} "
        f"tokens; kernels {runner.kernels}; "
        + (f"{len(graphs.sizes)} decode and {len(graphs.verify_sizes)} verification graphs captured in "
           f"{graphs.capture_seconds:.1f}s ({graphs.verify_capture_seconds:.1f}s verification), "
           f"{graphs.capture_bytes / 2**20:.0f} MiB" if graphs is not None else "CUDA graphs off")
    )
    rng = random.Random(0)
    vocab = cfg["vocab_size"]

    def prompts(n: int, length: int) -> list[list[int]]:
        return [[rng.randrange(100, vocab) for _ in range(length)] for _ in range(n)]

    run_engine(runner, config, prompts(2, 128), 8)  # warm-up (compiles prefill kernels)
    rows = []
    todo = set(args.workloads.split(","))
    one_step = replace(config, overlap_scheduling=False)  # what overlapped scheduling buys
    static = {"a": (1, base_a), "b": (64, base_b)}  # (batch, transformers baseline)
    dense_tok_s: dict[str, float] = {}  # bf16 (a), (b), (c): what each variant's rows compare with

    def static_rows(key: str, label: str, run_config: Any, with_ttft: bool = False, versus: float | None = None,
                    detail: bool = False, **knobs: Any) -> float:
        """`detail`: what the run's time went to besides its median step (load/step_timeline.py), printed
        in the row and, with --timeline-dir, every step and request dumped as JSON."""
        batch, base = static[key]
        r = run_engine(runner, run_config, prompts(batch, 128), 256, **knobs)
        ttft = f"TTFT p50 {r['ttft_p50'] * 1e3:.1f} ms, " if with_ttft else ""
        than = f"; {100 * r['tok_s'] / versus:.1f}% of the same without" if versus else ""
        if detail:
            than += f"; {r['seconds']:.2f} s; " + r["timeline"].summary()
            if args.timeline_dir is not None:
                args.timeline_dir.mkdir(parents=True, exist_ok=True)
                name = "".join(c if c.isalnum() else "-" for c in f"{shape} {key} {label}").strip("-")
                r["timeline"].dump(args.timeline_dir / f"{name}.json", row=f"({key}) {label}", tok_s=r["tok_s"])
        rows.append(Row(shape, f"({key}) {label}", r["tok_s"], roofline_static(floor, batch, 128, 256), base,
                        f"{ttft}TPOT p50 {r['tpot_p50'] * 1e3:.2f} ms{than}"))
        return float(r["tok_s"])

    for key in ("a", "b"):
        if key in todo:
            size = "batch 1" if key == "a" else "64 x"
            dense_tok_s[key] = static_rows(key, f"{size} (128 in / 256 out)", config, with_ttft=True)
            static_rows(key, "one step at a time (no overlap)", one_step)
    if "b" in todo and args.watermark:  # what the watermark stage costs, greedy and sampled
        greedy = static_rows("b", "greedy", config)
        static_rows("b", "greedy + watermark", config, versus=greedy, watermark=True)
        sampled = static_rows("b", "sampled (temperature 1)", config, do_sample=True)
        static_rows("b", "sampled + watermark", config, versus=sampled, do_sample=True, watermark=True)
    if "b" in todo and args.grammar:  # guided decoding beside the same unconstrained, in one run
        greedy = static_rows("b", "greedy", config, detail=True)
        notes.extend(f"{shape}: {line}" for line in mixed_step_probe(runner, config, vocab))
        grammars, grammar = _guided(args, runner)
        grammars.matcher(grammar, [])  # compiled once here: neither guided row times the cold compile
        # The guided path's first use in the process (mask threads, its kernels, pinned buffers), as
        # the warm-up above does for the rest; printed, so a one-time cost shows here.
        warm = run_engine(runner, config, prompts(64, 128), 8, grammars=grammars, grammar=grammar)
        notes.append(f"{shape}: guided warm-up (64 x 8 tokens): {warm['seconds']:.2f} s; {warm['timeline'].summary()}")
        static_rows("b", "greedy + JSON schema (200+ array items)", config, versus=greedy, detail=True,
                    grammars=grammars, grammar=grammar)
        # The same guided steps one at a time, as before the masks' two-half launch (worker/engine.py).
        static_rows("b", "greedy + JSON schema, one step at a time", one_step, versus=greedy, detail=True,
                    grammars=grammars, grammar=grammar)
    if args.speculate:  # n-gram drafts on random-weight greedy text (it repeats itself), vs the same without
        from load.bench_speculative import verify_step_ratio

        spec = replace(config, speculate=args.speculate)
        for key in ("a", "b"):
            if key in dense_tok_s:
                static_rows(key, f"--speculate {args.speculate} (n-gram)", spec, versus=dense_tok_s[key])
        if args.speculator in ("medusa", "mlp_speculator"):  # untrained heads: their cost, not what trained ones gain
            from load.speculator_heads import write_random_heads
            from worker.speculative.heads import load_speculator

            heads_dir = write_random_heads(root / f"{shape}-{args.speculator}", args.speculator, cfg["hidden_size"],
                                           vocab, args.speculate, dtype=torch.bfloat16)
            heads = load_speculator(heads_dir, runner.model_config, args.speculate, runner.dtype, runner.device)
            for key in ("a", "b"):
                if key in dense_tok_s:
                    static_rows(key, f"--speculate {args.speculate} (random {args.speculator} heads)", spec,
                                versus=dense_tok_s[key], speculator=heads)
        plain_ms, verify_ms, path = verify_step_ratio(runner, args.speculate)
        notes.append(f"{shape}: batch-1 step verifying {args.speculate} drafts {verify_ms:.2f} ms vs a plain decode "
                     f"step {plain_ms:.2f} ms, {path} ({verify_ms / plain_ms:.2f}x; target <= 1.15x)")
    if "b" in todo and args.lora:  # LoRA rows of N adapters in one batch, vs the base alone
        from load.bench_lora import write_adapters
        from worker.lora.peft import AdapterSpec

        made = write_adapters(root / f"{shape}-lora", cfg, args.lora, args.lora_rank)
        for adapter_id, directory in made:
            runner.adapters.load(AdapterSpec(adapter_id, str(directory)))
        label = f"64 x over {args.lora} LoRA adapters (r={args.lora_rank}, every linear; steps eager)"
        static_rows("b", label, config, versus=dense_tok_s.get("b"), adapters=tuple(a for a, _ in made))
        static_rows("b", f"base rows, {args.lora} adapters loaded", config, versus=dense_tok_s.get("b"))
        for adapter_id, _ in made:
            runner.adapters.unload(adapter_id)
    if "a" in todo and graphs is not None:
        runner.graphs = None  # what the graphs buy: the same workload eagerly
        static_rows("a", "without CUDA graphs", config)
        runner.graphs = graphs
        for size in (1, 64):
            if (size, 1) in graphs.graphs:
                notes.append(f"{shape}: {replay_note(graphs, size)}")
    c: dict[str, float] = {}
    c_roofline = roofline_flood(floor, args.requests, 1024, 128, runner.num_blocks * runner.block_size)
    if "c" in todo or "d" in todo:
        c_prompts = [[rng.randrange(100, vocab) for _ in range(1024)] for _ in range(args.requests)]
        c = run_engine(runner, config, c_prompts, 128)
        dense_tok_s["c"] = c["tok_s"]
        rows.append(Row(shape, f"(c) {args.requests} x (1024 in / 128 out) at t=0", c["tok_s"], c_roofline, None,
                        f"{c['seconds']:.1f}s, {c['steps']} steps, {c['computed_tokens'] / 1e6:.2f}M tokens computed, "
                        f"{c['preemptions']} preemptions, TTFT p50 {c['ttft_p50']:.2f}s, TPOT p50 {c['tpot_p50'] * 1e3:.1f} ms"))
    if cfg.get("num_local_experts") and ("a" in todo or "b" in todo):
        from genfleet_kernels.bench import moe_report

        notes += [f"{shape}: {line}" for line in moe_report(cfg["hidden_size"], cfg["intermediate_size"],
                                                             cfg["num_local_experts"], cfg["num_experts_per_tok"],
                                                             (1, 64, 512))]
        notes.append(f"{shape}: experts read per layer per decode step (random routing): batch 1 "
                     f"{floor.experts_read(1):.1f}, batch 64 {floor.experts_read(64):.2f}")
    elif "a" in todo or "b" in todo:
        for batch in (1, 64):
            parts = decode_step_breakdown(cfg, batch, 384)
            total = sum(v for name, v in parts.items() if not name.startswith("("))  # "(...)": replaced by a fused op
            notes.append(f"{shape} decode step kernels, batch {batch}, ctx 384 (GPU µs per step, graph-replayed, x layers): "
                         + ", ".join(f"{k} {v:.0f}" for k, v in parts.items()) + f"; sum {total:.0f} µs")
    if "a" in todo and shape == "llama-3.1-8b":
        from genfleet_kernels.bench import gemv_report
        from worker import ops

        notes += [f"one-row linear, {line}" for line in gemv_report()]
        notes.append("one-row linear choices: " + ", ".join(f"{k}: {v}" for k, v in ops.one_row_choices().items()))
    notes.append(f"{shape} floor per decode step at batch 1: {floor.decode_step([256]) * 1e6:.0f} µs "
                 f"({floor.weight_bytes / 1e9:.2f} GB weights)")
    capacity = runner.num_blocks * runner.block_size
    del runner, graphs
    release_memory()
    if args.speculate and args.speculator == "eagle3":  # a runner of its own: the draft's KV is sized with the model's
        from load.speculator_heads import write_eagle3

        draft = write_eagle3(root / f"{shape}-eagle3", cfg["hidden_size"], vocab, heads=cfg["num_attention_heads"],
                             kv_heads=cfg["num_key_value_heads"], intermediate=cfg["intermediate_size"],
                             draft_vocab=min(32000, vocab), dtype=torch.bfloat16)
        spec = replace(config, speculate=args.speculate, speculative_model=str(draft))
        runner = ModelRunner(spec, model_dir, load=False)
        notes.append(f"{shape}: EAGLE-3 runner KV pool {runner.num_blocks * runner.block_size} tokens (model and draft); "
                     f"the draft (fused layers {runner.model.aux_layers}) runs eagerly")
        run_engine(runner, spec, prompts(2, 128), 8, speculator=runner.speculator)  # warm-up
        for key in ("a", "b"):
            if key in dense_tok_s:
                static_rows(key, f"--speculate {args.speculate} (random EAGLE-3 draft, chained)", spec,
                            versus=dense_tok_s[key], speculator=runner.speculator)
        del runner
        release_memory()
    if args.tokenizer_dir is not None and "d" in todo:
        rows.append(fleet_row(shape, model_dir, args, config, c, c_roofline))
        if args.checkpoint_ab:
            # The same flood with the workers' per-step token checkpoints off (they are on by default).
            rows.append(fleet_row(shape, model_dir, args, replace(config, checkpoint_tokens=False), c, c_roofline,
                                  " with --checkpoint-tokens false"))
    return Result(rows, notes, dense_tok_s, capacity)


def fleet_row(shape: str, model_dir: Path, args: argparse.Namespace, config: Any, c: dict[str, float],
              roofline: float | None, variant: str = "") -> Row:
    """(d): (c)'s flood through gateway + Redis + worker + SSE, beside (c) run in-process."""
    from genfleet.serve import child_argv
    from load.bench_fleet import flood

    # The fleet's worker runs with exactly the settings of the in-process engine of (c).
    flags = child_argv("worker", config, config.fleet)[4:]  # what follows `python -m genfleet worker`
    log = args.fleet_log / f"fleet-{shape}.log" if args.fleet_log else None
    d = flood(model_dir, args.requests, 1024, 128, flags, log)
    return Row(shape, "(d) = (c) through the fleet (HTTP + Redis + SSE)" + variant, d["tok_s"], roofline, None,
               f"{d['ok']}/{args.requests} ok; {100 * d['tok_s'] / c['tok_s']:.1f}% of (c); TTFT p50 {d['ttft_p50']:.2f}s "
               f"({(d['ttft_p50'] - c['ttft_p50']) * 1e3:+.0f} ms vs (c)), p99 {d['ttft_p99']:.2f}s; TPOT p50 "
               f"{d['tpot_p50'] * 1e3:.1f} ms; ITL p50/p99 {d['itl_p50'] * 1e3:.1f}/{d['itl_p99'] * 1e3:.1f} ms; "
               f"one request at a time (128 in): TTFT p50 {d['single_ttft_p50'] * 1e3:.1f} ms"
               + (f"; first error {d['first_error']}" if d["failed"] else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="8b,smollm2", help="comma list of: 8b, smollm2, mixtral")
    parser.add_argument("--requests", type=int, default=1000, help="workload (c) request count")
    parser.add_argument("--prefill-tokens", type=int, default=8192, help="--max-batch-prefill-tokens")
    parser.add_argument("--cuda-graphs", default="1,2,4,8,16,32,64,128,256")
    parser.add_argument("--max-batch-size", type=int, default=256, help="--max-batch-size of the engine and the fleet")
    parser.add_argument("--workloads", default="a,b,c,d", help="comma list of a, b, c, d")
    parser.add_argument("--no-baseline", action="store_true", help="skip transformers generate")
    parser.add_argument("--watermark", action="store_true", help="(b) greedy and sampled, each with and without the watermark")
    parser.add_argument("--grammar", action="store_true",
                        help="(b) greedy with and without a JSON-schema grammar, and guided one step at a time "
                        "(needs --tokenizer-dir)")
    parser.add_argument("--timeline-dir", type=Path, default=None,
                        help="with --grammar: each of its rows' steps and requests as JSON in this directory")
    parser.add_argument("--lora", type=int, default=0, help="(b) over this many random LoRA adapters, and on the "
                        "base with them loaded, beside (b) without")
    parser.add_argument("--lora-rank", type=int, default=16, help="rank of the --lora adapters")
    parser.add_argument("--speculate", type=int, default=0,
                        help="(a), (b) with n-gram --speculate N beside the same without, and a verification step's cost")
    parser.add_argument("--speculator", choices=("medusa", "mlp_speculator", "eagle3"), default=None,
                        help="with --speculate N: (a), (b) with random heads (or a random EAGLE-3 draft) of this kind "
                             "drafting, beside the same without")
    parser.add_argument("--tokenizer-dir", type=Path, default=None,
                        help="tokenizer files for (d), the fleet path (the gateway tokenizes text); off without")
    parser.add_argument("--fleet-log", type=Path, default=None, help="directory for the fleet processes' logs")
    parser.add_argument("--quantize", default="", help="comma list of --quantize methods whose (a), (b), (c) rows to add")
    parser.add_argument("--variants", default="", help="comma list of SETTING=VALUE (a WorkerConfig field, e.g. "
                        "quantize=fp8, kv_cache_dtype=fp8_e4m3fn): (a), (b), (c) again with it, beside bf16; bf16 and each "
                        "setting run in a process of their own (load/bench_variants.py)")
    parser.add_argument("--checkpoint-ab", action="store_true", help="(d) a second time with the workers' token "
                        "checkpoints off (--checkpoint-tokens false): their cost on the fleet path")
    parser.add_argument("--num-shard", default="", help="comma list of rank counts (e.g. 1,2,4): (a), (b) and the "
                        "all-reduce time per decode step for each, on that many GPUs (load/bench_shards.py)")
    parser.add_argument("--variant-child", default=None, help=argparse.SUPPRESS)  # load/bench_variants.py's ChildSpec
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.variant_child is not None:
        return _child(args, ChildSpec.from_json(args.variant_child))
    variants = variants_of(args.quantize, args.variants)
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        card = None if variants else _card()  # with variants the parent leaves the GPU to its children
        for name in args.models.split(","):
            started = time.perf_counter()
            shape = ALIASES.get(name, name)
            if variants:
                r, n = bench_in_children(shape, argv, variants)
            else:
                assert card is not None
                result = bench_model(shape, Path(tmp), card, args)
                r, n = result.rows, result.notes
                for row in r:
                    print(row, flush=True)
            rows += r
            notes += n + [f"{name}: {time.perf_counter() - started:.0f}s"]
    if args.num_shard:
        shard_table = ["| model | ranks | (a) out tok/s | (b) out tok/s | NCCL µs per (b) decode step | share of the step |",
                       "|---|---|---|---|---|---|"]
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.models.split(","):
                shape = ALIASES.get(name, name)
                model_dir = write_model_dir(Path(tmp), shape)
                shard_table += shard_rows(shape, model_dir, _engine_config(args, model_dir),
                                          [int(n) for n in args.num_shard.split(",")])
        print("\n".join(["", *shard_table]))
    print("\n".join(["", *markdown_table(rows), ""]))
    for note in notes:
        print("-", note)
    return 0


def _card() -> Card:
    import torch

    assert torch.cuda.is_available(), "load.bench_gpu needs a CUDA GPU"
    card = measure_card()
    print(f"card: {card.name}; copy {card.copy_bytes_per_s / 1e12:.2f} TB/s (read + write); "
          f"bf16 GEMM {card.gemm_flops / 1e12:.0f} TFLOP/s", flush=True)
    return card


def _child(args: argparse.Namespace, spec: ChildSpec) -> int:
    """One process's rows for load/bench_variants.py: bf16's (all of bench_model) or one variant's."""
    card = spec.card or _card()
    with tempfile.TemporaryDirectory() as tmp:
        if spec.variant:
            model_dir = write_model_dir(Path(tmp), spec.shape, args.tokenizer_dir)
            config = replace(_engine_config(args, model_dir), **variant_setting(spec.variant))
            label = "" if spec.variant.startswith(("quantize=", "kv_cache_dtype=")) else spec.variant
            result = variant_rows(spec.shape, model_dir, floor_for(SHAPES[spec.shape], card), config,
                                  set(args.workloads.split(",")), args.requests, label)
        else:
            result = bench_model(spec.shape, Path(tmp), card, args)
    for row in result.rows:
        print(row, flush=True)
    result.card = card
    print(RESULT_TAG + result.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
