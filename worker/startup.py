"""Worker startup: resolve the model, load tokenizer and weights, size the KV pool, build the engine."""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import WorkerConfig
from common.context_length import context_length, max_total_tokens
from common.model_source import resolve_model
from worker.batch import Engine
from worker.lora.control import AdapterControl
from worker.lora.peft import AdapterSpec, parse_adapter_specs

if TYPE_CHECKING:
    from worker.grammar import GrammarCompiler
    from worker.lora.table import AdapterTable

__all__ = ["build_engine", "load_tokenizer"]

log = logging.getLogger("genfleet.worker")


def load_tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _grammar_compiler(model_dir: Path, vocab_size: int, eos_token_ids: frozenset[int]) -> GrammarCompiler | None:
    """Grammars need the fast tokenizer's file; without one the worker refuses constrained requests."""
    from worker.grammar import GrammarCompiler

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        log.warning("%s has no tokenizer.json: requests with a grammar will be refused", model_dir)
        return None
    return GrammarCompiler(path, vocab_size, eos_token_ids)


def build_engine(config: WorkerConfig) -> tuple[Engine, Any, str, int, str | None, AdapterControl]:
    """Returns (engine, tokenizer, device description, max_total_tokens, quantization method or None,
    its LoRA adapters with --lora-adapters loaded).

    A quantization setting the worker cannot serve raises worker.quant.QuantizationError, a
    --num-shard it cannot serve worker.parallel.ShardingError, speculator heads it cannot serve
    worker.speculative.heads.SpeculatorError, an adapter worker.lora.AdapterError."""
    fleet = config.fleet
    specs = parse_adapter_specs(config.lora_adapters)  # a malformed flag fails before the model loads
    model_dir = resolve_model(fleet.model_id, model_cache=fleet.model_cache, revision=fleet.revision)
    tokenizer = load_tokenizer(str(model_dir))
    if config.synthetic_tokens_per_s > 0:
        from worker.synthetic import SyntheticEngine

        synthetic = SyntheticEngine(config, vocab_size=len(tokenizer))
        max_total = max_total_tokens(context_length(model_dir), fleet.max_total_tokens)
        return synthetic, tokenizer, "synthetic", max_total, None, _adapters(None, specs, lambda _: None)

    from worker.engine import LLMEngine
    from worker.model_runner import ModelRunner, resolve_device
    from worker.parallel.launch import check_shardable, start_ranks, world_size_of

    started = time.monotonic()
    device = resolve_device(config.device)
    world_size = world_size_of(config, device)
    shards = None
    if world_size > 1:
        check_shardable(config, model_dir, world_size)
        shards = start_ranks(config, world_size, device)
    if shards is not None:
        atexit.register(shards.close)
    runner = ModelRunner(config, model_dir, load=not config.random_weights, shards=shards)
    max_total = max_total_tokens(runner.max_model_len, fleet.max_total_tokens)
    engine = LLMEngine(
        config,
        runner,
        num_blocks=runner.num_blocks,
        eos_token_ids=runner.eos_token_ids,
        max_model_len=max_total,
        grammars=_grammar_compiler(model_dir, runner.vocab_size, runner.eos_token_ids),
        speculator=runner.speculator,
        kv_window=runner.model.cfg.kv_window,
    )
    capacity = runner.num_blocks * runner.block_size
    log.info(
        "model %s loaded on %s (%s%s) in %.1fs; KV capacity %d tokens (%d blocks of %d)",
        fleet.model_id, runner.device, runner.dtype, ", random weights" if config.random_weights else "",
        time.monotonic() - started,
        capacity, runner.num_blocks, runner.block_size,
    )
    where = f"{runner.device}" if shards is None else f"{device.type} x{world_size} ({shards.backend})"
    adapters = _adapters(runner.adapters, specs, engine.blocks.forget_adapter)
    return engine, tokenizer, where, max_total, runner.quantize, adapters


def _adapters(table: AdapterTable | None, specs: list[AdapterSpec], forget_prefixes: Callable[[str], None]) -> AdapterControl:
    control = AdapterControl(table, forget_prefixes=forget_prefixes)
    for spec in specs:
        control.preload(spec)
    return control
