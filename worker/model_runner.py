"""Owns the model and the KV tensors; turns a ScheduledBatch into a StepOutput. No scheduling here.

`execute(batch)` is `wait(launch(batch, None))`. `launch` queues the whole step on the device —
inputs, forward, sampling, and the copy of its results into pinned host memory — and returns at
once; `wait` blocks on that copy alone. So the engine can launch step N+1 before it reads step N:
N+1's PLACEHOLDER tokens are filled from N's sampled ids on the device, and N's results are read
without waiting for N+1 (its copy was queued ahead of N+1 and signals its own event).

A step with grammar masks can be launched in two halves: `launch(..., defer_sample=True)` queues
the inputs, the forward and the logits; `sample(step, ended)` later fills the masks from the
matchers as they are then (after the engine has read N's tokens and advanced them) and queues
the sampling and the copy back. The device runs N+1's forward while the host does that.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from common.config import WorkerConfig
from common.context_length import context_length
from worker import cpu_linear, grammar_mask, kv_sizing, ops, sampler
from worker.attention import PagedAttentionBackend, forward_context
from worker.batch import PLACEHOLDER, ScheduledBatch, StepOutput
from worker.block_tables import BlockTables
from worker.cpu_features import native_bf16
from worker.cuda_graphs import DecodeGraphs, Replayed, capture_decode_graphs
from worker.input_builder import ModelInputs, host_tensor, pack_inputs, unpack_inputs, upload
from worker.kv_cache import resolve_kv_dtype
from worker.logits_layout import LogitsLayout
from worker.lora.layer import LoraBatch, lora_scope
from worker.lora.table import AdapterTable
from worker.models import CausalLM, UnsupportedModel, read_config
from worker.parallel import ShardGroup, add_all_reduces, shard_model
from worker.pending_step import PendingStep, Unsampled, read_results
from worker.quant import METHODS, read_checkpoint_quantization, select_method
from worker.quant.summary import log_weights, randomize
from worker.speculative import verify
from worker.speculative.eagle3 import Eagle3Draft
from worker.speculative.eagle3_plan import plan_draft
from worker.speculative.heads import DraftSource, Speculator, speculator_for
from worker.watermark import Watermark
from worker.request import RequestKey
from worker.weights import load_weights

__all__ = ["ModelRunner", "resolve_device", "resolve_dtype"]

log = logging.getLogger("genfleet.worker.runner")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" or native_bf16() else torch.float32
    return _DTYPES[name]


class ModelRunner:
    def __init__(self, config: WorkerConfig, model_dir: Path, *, load: bool = True,
                 shards: ShardGroup | None = None) -> None:
        self.config = config
        # A sharded worker's rank (worker/parallel/): this rank's part of the model; rank 0 samples.
        self.shards = shards
        self.device = shards.device if shards is not None else resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.kv_dtype = resolve_kv_dtype(config.kv_cache_dtype, self.dtype)
        self.block_size = config.block_size
        self.kernels = ops.use_device(self.device, config.cpu_kernels, config.fused_rotary_store, config.pdl)
        cls, cfg = read_config(model_dir)
        self.model_config = cfg
        # The quantization method: --quantize, else the checkpoint's own (None: dense).
        self.quant = select_method(config.quantize, read_checkpoint_quantization(model_dir), random_weights=not load)
        if self.quant is not None and cls.has_experts and not self.quant.quantizes_experts:
            covered = ", ".join(sorted(name for name, m in METHODS.items() if m.quantizes_experts))
            raise UnsupportedModel(
                f"{cfg.architecture}: quantization {self.quant.name} does not cover its experts; experts load "
                f"quantized with {covered}; serve the unquantized checkpoint or one of those"
            )
        plan = shards.plan(cfg) if shards is not None else None
        # Built in its serving dtype: a float32 build first would need twice the weights' memory
        # (Mixtral-8x7B: 187 GB, more than one card holds).
        # A checkpoint's quantized experts are built only as shapes: they replace the dense stacks.
        experts_kw = {"quantized_experts": True} if self.quant is not None and cls.has_experts \
            and not self.quant.on_the_fly and load else {}
        with torch.device(self.device), _default_dtype(self.dtype):
            model: CausalLM = cls(cfg if plan is None else plan.local_config(cfg), **experts_kw)
        if shards is not None and plan is not None:
            shard_model(model, plan, shards, self.quant)
        if load:
            load_weights(model, model_dir, self.dtype, self.device, self.quant, plan)
        else:  # random weights of the real shape (benchmarks)
            model.to(dtype=self.dtype)
            model.cos_sin_cache.data = model.cos_sin_cache.float()
            if self.quant is not None:
                randomize(model, self.quant, self.dtype, self.device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # the dense linears that quantized ones replaced
        if shards is not None:
            add_all_reduces(model, shards)
        self.model = model.eval().requires_grad_(False)
        if self.device.type == "cpu":  # the weights are final from here on
            cpu_linear.pack_weights(self.model, self.dtype)
        self.quantize = self.quant.name if self.quant is not None else None
        self._freed_bytes = log_weights(self.model, self.quant, self.dtype)
        self.eos_token_ids = cfg.eos_token_ids
        self.max_model_len = context_length(model_dir)
        self.vocab_size = cfg.vocab_size
        # What drafts (worker/speculative/heads.py): the model's Medusa or MLP-speculator heads, or an
        # EAGLE-3 draft model with a KV of its own; None: n-gram or off.
        self.speculator: DraftSource | None = speculator_for(config, model_dir, cfg, self.dtype, self.device,
                                                             shards is not None)
        self.draft_model = self.speculator if isinstance(self.speculator, Eagle3Draft) else None
        self.heads: Speculator | None = None if self.draft_model is not None else self.speculator  # type: ignore[assignment]
        if self.draft_model is not None:  # the forward returns the layers' inputs it fuses, too
            self.draft_model.bind(self.model)
            if self.device.type == "cpu":
                cpu_linear.pack_weights(self.draft_model, self.dtype)
        self.watermark = Watermark(config.fleet.watermark_gamma, config.fleet.watermark_delta)
        self.attention = PagedAttentionBackend()
        self.block_tables = BlockTables()  # the host copy of the served requests' tables, kept across steps
        # LoRA adapters (worker/lora/): none until one is loaded; a sharded model takes none.
        self.adapters = None if shards is not None else AdapterTable(
            self.model, self.dtype, self.device, config.max_loras, config.fleet.model_cache)
        self.graphs: DecodeGraphs | None = None  # the KV sizing warm-up runs eagerly
        self.eager_forwards = 0  # forwards run eagerly since the graphs were captured (benchmarks report it)
        self.mask_seconds = 0.0  # host seconds spent filling grammar masks (load/step_timeline.py reads it)
        # On CUDA the host can prepare the next step while the device runs this one.
        self.can_overlap = self.device.type == "cuda"
        self.kv = kv_sizing.allocate_kv(self)
        self.num_blocks = self.kv.num_blocks
        # CUDA graphs per batch bucket, decode and verification (worker/cuda_graphs.py); None on CPU or when off.
        self.graphs = capture_decode_graphs(self)
        # With verification graphs, a step replays one only when its decodes verify as many drafts.
        self.uniform_drafts = self.graphs is not None and bool(self.graphs.verify_sizes)

    # -- one step ------------------------------------------------------------------------------
    def execute(self, batch: ScheduledBatch) -> StepOutput:
        return self.wait(self.launch(batch, None))

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch, previous: PendingStep | None, *, defer_sample: bool = False) -> PendingStep:
        """Queue the step; with `defer_sample` only up to its logits (then `sample` queues the rest)."""
        inputs = self.prepare_inputs(batch, previous)
        # Sampling inputs are uploaded before the forward is queued, so no copy waits for it.
        sampled = verify.sampling_rows(batch.requests, inputs.layout)  # one per sampling row
        tensors = None
        if sampled:
            tensors = sampler.prepare(sampled, self.vocab_size, self.device, self.eos_token_ids, self.watermark)
        lora = self.adapters.batch(batch) if self.adapters is not None else None
        replayed = self._replay(inputs, lora)
        hidden, aux = self._split(replayed.hidden if replayed is not None else self._eager(inputs, lora))
        reqs, layout = batch.requests, inputs.layout
        if replayed is not None and replayed.logits is not None:  # the graph ran the LM head too
            if len(layout.rows) == hidden.shape[0]:  # every row, in order (rows increase): no gather
                logits_all = replayed.logits
            else:
                hidden, logits_all, replayed = hidden[inputs.logits_rows], replayed.logits[inputs.logits_rows], None
        else:
            hidden = hidden[inputs.logits_rows]  # (N, hidden): the heads read it too
            logits_all = self._logits_of(hidden)
            replayed = None
        assert logits_all is not None  # rank 0 (or unsharded) always has them
        step = PendingStep(
            batch=batch,
            layout=layout,
            row_of={reqs[i].key: j for j, i in reversed(list(enumerate(layout.sample_batch_idx)))},
            unsampled=Unsampled(inputs, sampled, tensors, logits_all, hidden, aux, replayed),
        )
        if not defer_sample:
            self.sample(step)
        return step

    @torch.inference_mode()
    def sample(self, step: PendingStep, ended: frozenset[RequestKey] = frozenset()) -> None:
        """Queue the sampling of a launched step. Its grammar masks are filled now, from each
        matcher's present state (on the host, while the device still runs the forward); the rows of
        `ended` requests (finished since the launch: their samples are dropped) get no mask."""
        held, step.unsampled = step.unsampled, None
        assert held is not None, "a step sampled twice"
        if held.tensors is not None:
            matchers = [None if r.key in ended else r.grammar for r in held.sampled]
            started = time.perf_counter()
            held.tensors.grammar = grammar_mask.prepare(matchers, self.vocab_size, self.device)
            self.mask_seconds += time.perf_counter() - started
        self._sample(step, held)

    def prepare_inputs(self, batch: ScheduledBatch, previous: PendingStep | None) -> ModelInputs:
        """The step's device inputs, placeholders filled; a sharded worker's other ranks get them too."""
        packed = pack_inputs(batch, self.block_size, self.block_tables)
        placeholders = any(r.token_ids[0] == PLACEHOLDER for r in batch.requests[: batch.num_decode])
        if self.shards is not None:
            self.shards.send_step(packed.header, packed.flat, placeholders)
        inputs = unpack_inputs(upload(packed.flat, self.device), packed.header, packed.layout)
        if placeholders:
            self._fill_placeholders(batch, inputs, previous)
        return inputs

    def logits(self, inputs: ModelInputs, lora: LoraBatch | None = None) -> torch.Tensor | None:
        """The forward and the LM head: (N, V) float32, on rank 0 only when sharded (None elsewhere)."""
        return self._logits_of(self._split(self._forward(inputs, lora))[0][inputs.logits_rows])

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The forward's output as (T, hidden) and, for an EAGLE-3 draft, (T, 3 * hidden) the
        residual streams it fuses (CausalLM.aux_layers); None without one."""
        if self.draft_model is None:
            return out, None
        width = self.model.cfg.hidden_size
        return out[:, :width], out[:, width:]

    def _logits_of(self, hidden: torch.Tensor) -> torch.Tensor | None:
        local = self.model.compute_logits(hidden)  # (N, V or vocab_per_rank) float32
        return local if self.shards is None else self.shards.gather_logits(local, self.vocab_size)

    def _fill_placeholders(self, batch: ScheduledBatch, inputs: ModelInputs, previous: PendingStep | None) -> None:
        # Placeholders only ever open decode rows, which come first (their drafts follow them):
        # each takes the previous step's sample in the request's row `placeholder_row`.
        if previous is None or previous.token_ids is None:
            raise RuntimeError("a placeholder token without the step that samples it")
        assert previous.unsampled is None, "a step launched after one whose sampling is not queued yet"
        src, dst, at = [], [], 0
        for r in batch.requests[: batch.num_decode]:
            if r.token_ids[0] == PLACEHOLDER:
                src.append(previous.row_of[r.key] + r.placeholder_row)
                dst.append(at)
            at += len(r.token_ids)
        index = upload(host_tensor(src + dst), self.device).view(2, -1)  # (2, P)
        inputs.input_ids.index_copy_(0, index[1], previous.token_ids[index[0]])
        if self.shards is not None:
            self.shards.share_placeholders(inputs.input_ids[: inputs.decode_tokens])

    def _replay(self, inputs: ModelInputs, lora: LoraBatch | None = None) -> Replayed | None:
        # NOTE: the graphs were captured without adapters: a step with adapter rows runs eagerly.
        # Decode and verification steps of a graph's shape replay it (worker/cuda_graphs.py).
        if self.graphs is None or lora is not None:
            return None
        return self.graphs.try_replay(inputs)

    def _forward(self, inputs: ModelInputs, lora: LoraBatch | None = None) -> torch.Tensor:
        """The step's hidden states: replayed from a graph where one fits, else eagerly."""
        replayed = self._replay(inputs, lora)
        return replayed.hidden if replayed is not None else self._eager(inputs, lora)

    def _eager(self, inputs: ModelInputs, lora: LoraBatch | None = None) -> torch.Tensor:
        if self.graphs is not None and lora is None:
            self.eager_forwards += 1
        meta = self.attention.prepare_metadata(inputs, self.kv.layers)
        with forward_context(meta, self.attention), lora_scope(lora):
            return self.model(inputs.input_ids, inputs.positions)  # type: ignore[no-any-return]

    def _sample(self, step: PendingStep, held: Unsampled) -> None:
        inputs, logits_all, tensors, hidden, aux = held.inputs, held.logits, held.tensors, held.hidden, held.aux
        layout, batch = inputs.layout, step.batch
        token_ids = logprobs = top_ids = top_logprobs = prompt_logprobs = num_accepted = proposals = None
        replayed = None
        k = 0
        if tensors is not None:
            # Sample rows are increasing: as many as the logits rows means each of them in order (a
            # plain step), which needs no gather (an upload and a launch). None stands for that.
            rows: torch.Tensor | None = None
            if len(layout.sample_rows) != logits_all.shape[0]:
                rows = upload(host_tensor(layout.sample_rows), self.device)
            elif layout.proposers:  # the heads read the hidden state by it
                rows = torch.arange(logits_all.shape[0], device=self.device)
            # The token each logits row was computed from: the previous token (watermark stage).
            prev_ids = None
            if tensors.watermark is not None:
                prev_ids = inputs.input_ids[inputs.logits_rows if rows is None else inputs.logits_rows[rows]]
            replayed = held.replayed
            k = tensors.max_top_n
            if replayed is not None and rows is None and sampler.greedy_only(tensors):
                # The graph's argmax is every row's sample (the same ops the sampler would queue).
                token_ids, logprobs = replayed.greedy, replayed.greedy_logprobs
            else:
                replayed = None
                result = sampler.sample(logits_all if rows is None else logits_all[rows], tensors, prev_ids)
                token_ids, logprobs, top_ids, top_logprobs = result.token_ids, result.logprobs, result.top_ids, result.top_logprobs
            if replayed is not None and replayed.accepted is not None:  # counted by the verification graph
                num_accepted = replayed.accepted
            elif layout.verify_spans:
                num_accepted = verify.accepted_counts(token_ids, layout, self.device, inputs.input_ids)
            if layout.proposers and self.heads is not None and rows is not None:
                proposals = self._propose(layout, rows, hidden, token_ids, num_accepted)
        if self.draft_model is not None and batch.speculating and aux is not None:
            # Its KV follows every token the target computed in a speculating step, proposer or not.
            plan = plan_draft(batch, layout, self.block_size, self.draft_model.num_heads, self.draft_model.scratch_base)
            proposals = self.draft_model.draft(plan, inputs, aux, token_ids, num_accepted, self.attention)
        if layout.prompt_rows:
            index = upload(host_tensor(layout.prompt_rows + layout.prompt_targets), self.device)
            picked = logits_all[index[: len(layout.prompt_rows)]]  # (P, V)
            targets = index[len(layout.prompt_rows) :].unsqueeze(1)  # (P, 1)
            prompt_logprobs = torch.log_softmax(picked, dim=-1).gather(1, targets).squeeze(1)  # (P,)
        # Everything comes back in one transfer (float64 holds token ids exactly), queued now
        # and waited for in `wait`: the step's one host synchronisation.
        if replayed is not None and replayed.packed is not None and prompt_logprobs is None and proposals is None:
            flat = replayed.packed  # the graph packed its greedy results (and acceptance) as `pack` lays them out
        else:
            flat = layout.pack(k, token_ids, logprobs, top_ids, top_logprobs, prompt_logprobs, num_accepted, proposals)
        host = ready = None
        if flat is not None:
            if self.device.type == "cuda":
                host = torch.empty(flat.shape, dtype=torch.float64, pin_memory=True)
                host.copy_(flat, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
            else:
                host = flat
        step.token_ids, step.host, step.ready, step.top_n = token_ids, host, ready, k

    def _propose(self, layout: LogitsLayout, rows: torch.Tensor, hidden: torch.Tensor, token_ids: torch.Tensor,
                 num_accepted: torch.Tensor | None) -> torch.Tensor:
        """(R, K) int64: the heads' drafts after each proposer's last kept token, read from the
        hidden state of the row that sampled it (rows: each sampling row's logits row)."""
        assert self.heads is not None, "proposals asked of a model without speculator heads"
        index = upload(host_tensor([p[1] for p in layout.proposers] + [p[2] for p in layout.proposers]), self.device)
        first, span = index.view(2, -1)  # (R,), (R,)
        if num_accepted is not None:  # a verifying request's last kept token: after its accepted drafts
            first = first + torch.where(span >= 0, num_accepted[span.clamp(min=0)], 0)
        return self.heads.propose(hidden[rows[first]], token_ids[first], self.model)

    def wait(self, step: PendingStep) -> StepOutput:
        assert step.unsampled is None, "a step waited for before its sampling was queued"
        if step.ready is not None:
            step.ready.synchronize()
        return read_results(step)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
