"""Forward passes captured as CUDA graphs, one per (batch bucket, query length), replayed each step.

Two kinds of graph, keyed (bucket, q):
- decode, q = 1: one token per sequence, for every bucket of --cuda-graphs;
- verification, q = k + 1 (k = the worker's drafts per request, --speculate or its speculator's
  heads): each sequence brings its last token and exactly k drafts, for the buckets up to
  --speculate-max-batch-size (above it the drafter pauses, so no step verifies there).

`graph_query_len` is the eligibility rule, a function of the step's host ints alone (so every rank
of a sharded worker takes the same branch): a step of B sequences replays the smallest bucket >= B
of its q when every sequence brings exactly q tokens (for q > 1, only decode sequences: a prompt
chunk runs eagerly); any other step runs eagerly. The step's inputs are copied into static
buffers whose query_start_loc is fixed at 0, q, 2q, ...; padding sequences get slot -1 (store_kv
skips them) and a context of q tokens (each of their queries sees at least one key: no empty
softmax), and the first B * q rows of the static output are the step's hidden states, in the
eager path's row order, so logits and speculator heads read the same rows either way. Every graph
shares one memory pool, captured largest token count first.

With a `head` (an unsharded runner), each graph goes on past the forward: the LM head over every
row, and for each row the argmax and its logprob under the raw distribution, the greedy sampler's
work (`GraphHead`), so one replay yields a greedy step's next tokens; a verification graph also
counts each sequence's drafts that those argmaxes accept (worker/speculative/verify.py
`leading_matches`), so a greedy verifying step costs the host no launch more than a plain one.
The runner samples eagerly from the replayed logits whatever else a step asks for
(worker/model_runner.py). The head's
outputs sit in buffers shared by every graph (the first rows are the step's): a replay overwrites
the step before's, which the stream has read by then (each step's reads are queued before the
next step's replay).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from worker.attention import AttentionMetadata, PagedAttentionBackend, forward_context
from worker.input_builder import ModelInputs
from worker.kv_cache import KVLayer
from worker.speculative.verify import leading_matches

if TYPE_CHECKING:
    from worker.model_runner import ModelRunner

__all__ = ["DecodeGraphs", "GraphHead", "Replayed", "capture_decode_graphs", "graph_query_len", "run_head",
           "verify_buckets"]

log = logging.getLogger("genfleet.worker.graphs")


def graph_query_len(num_seqs: int, num_decodes: int, num_tokens: int, max_query_len: int) -> int:
    """The query length of the graph a step could replay (1 or the step's uniform q), or 0 when
    none could: sequences of unequal lengths, or a multi-token row that is a prompt chunk.

    A one-token row is the same forward whether it decodes or ends a prompt (the decode graphs
    have always taken both); a q-token row only verifies when it is a decode's.
    """
    if num_seqs == 0 or num_tokens != num_seqs * max_query_len:
        return 0
    if max_query_len == 1:
        return 1
    return max_query_len if num_decodes == num_seqs else 0


def verify_buckets(sizes: tuple[int, ...], max_speculating: int) -> tuple[int, ...]:
    """The decode buckets (ascending) that a step of at most `max_speculating` sequences can use:
    those below it and the first at or above it."""
    if max_speculating <= 0:
        return ()
    wanted = [s for s in sizes if s < max_speculating]
    wanted += [s for s in sizes if s >= max_speculating][:1]
    return tuple(wanted)


@dataclass(slots=True)
class _Static:
    input_ids: torch.Tensor  # (T_max,) int64 device; T_max = the largest bucket x q of any graph
    positions: torch.Tensor  # (T_max,) int64 device
    slot_mapping: torch.Tensor  # (T_max,) int64 device; -1 on padding rows
    block_tables: torch.Tensor  # (B_max, max_blocks) int32 device
    seq_lens: torch.Tensor  # (B_max,) int32 device; q on padding sequences
    query_start_loc: dict[int, torch.Tensor]  # q -> (B_max + 1,) int32 device: 0, q, 2q, ... (never written)


@dataclass(slots=True)
class GraphHead:
    """What a graph computes after the forward, over all T_max rows (a step's are the first)."""

    logits: torch.Tensor  # (T_max, V) float32: the LM head's, as ModelRunner._logits_of gives them
    greedy: torch.Tensor  # (T_max,) int64: each row's argmax
    greedy_logprobs: torch.Tensor  # (T_max,) float32: its logprob under the raw distribution
    accepted: torch.Tensor  # (B_max,) int64: a verification graph's drafts accepted per sequence
    # (2 * T_max + B_max,) float64: greedy, greedy_logprobs (and a verification graph's accepted)
    # of a bucket's rows, as LogitsLayout.pack lays them out
    packed: torch.Tensor


def run_head(head: Callable[..., torch.Tensor], hidden: torch.Tensor, outputs: GraphHead, query_len: int = 1,
             input_ids: torch.Tensor | None = None) -> None:
    """The LM head over hidden's T rows into the first T rows of `outputs`, then each row's argmax,
    its logprob under the raw distribution (worker/sampler.py `sample` of all-greedy rows, op for
    op), and both packed as LogitsLayout.pack lays out a plain step's results. With `query_len`
    q > 1 (a verification graph: T / q sequences, each its last token then q - 1 drafts, the
    step's `input_ids` (T,)), also the drafts each sequence's argmaxes accept, packed after them as
    a verifying step's results are."""
    tokens = hidden.shape[0]
    logits = head(hidden, out=outputs.logits[:tokens])  # (T, V) float32
    greedy = torch.argmax(logits, dim=-1, out=outputs.greedy[:tokens])  # (T,)
    raw = torch.log_softmax(logits, dim=-1)  # (T, V)
    chosen = outputs.greedy_logprobs[:tokens]
    chosen.copy_(raw.gather(1, greedy.unsqueeze(1)).squeeze(1))  # (T,)
    parts = [greedy.double(), chosen.double()]
    if query_len > 1:
        assert input_ids is not None and tokens % query_len == 0, (tokens, query_len)
        seqs = tokens // query_len
        accepted = leading_matches(greedy.view(seqs, query_len), input_ids.view(seqs, query_len),
                                   out=outputs.accepted[:seqs])  # (B,)
        parts.append(accepted.double())
    torch.cat(parts, out=outputs.packed[: sum(p.shape[0] for p in parts)])


@dataclass(slots=True)
class Replayed:
    """One replay's results: the step's rows of each static output (views, valid until the next replay)."""

    hidden: torch.Tensor  # (T, hidden): the forward's output
    logits: torch.Tensor | None = None  # (T, V) float32; None without a head
    greedy: torch.Tensor | None = None  # (T,) int64
    greedy_logprobs: torch.Tensor | None = None  # (T,) float32
    accepted: torch.Tensor | None = None  # (B,) int64: a verification graph's drafts accepted per sequence
    # (2T,) float64, (2T + B,) for a verification graph, when T is the bucket's size (no padding
    # rows), else None
    packed: torch.Tensor | None = None


@dataclass(slots=True)
class DecodeGraphs:
    model: torch.nn.Module
    kv_caches: list[KVLayer]
    sizes: tuple[int, ...]  # ascending decode bucket sizes (q = 1)
    max_blocks: int  # block-table width every graph was captured with
    backend: PagedAttentionBackend  # the runner's attention backend
    query_len: int = 1  # q of the verification graphs: 1 + drafts per request (1: none captured)
    verify_sizes: tuple[int, ...] = ()  # ascending buckets captured at `query_len`
    # hidden (rows, width) -> (rows, V) float32 logits, written into `out` when given; None: the
    # graphs stop at the hidden states (a sharded runner gathers its logits across ranks).
    head: Callable[..., torch.Tensor] | None = None
    hidden_size: int = 0  # the width of the forward's output the head reads (an EAGLE-3 target appends more)
    static: _Static | None = None
    outputs: GraphHead | None = None
    graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = field(default_factory=dict)
    replays: dict[int, int] = field(default_factory=dict)  # q -> steps replayed (benchmarks report it)
    capture_seconds: float = 0.0
    verify_capture_seconds: float = 0.0  # the verification graphs' part of capture_seconds
    capture_bytes: int = 0  # device memory held by the graphs' pool after capture

    def buckets(self, q: int) -> tuple[int, ...]:
        return self.sizes if q == 1 else self.verify_sizes if q == self.query_len else ()

    def capture(self, device: torch.device) -> None:
        keys = [(s, 1) for s in self.sizes] + [(s, self.query_len) for s in self.verify_sizes]
        max_tokens = max(s * q for s, q in keys)
        max_seqs = max(s for s, _ in keys)
        self.static = _Static(
            input_ids=torch.zeros(max_tokens, dtype=torch.int64, device=device),
            positions=torch.zeros(max_tokens, dtype=torch.int64, device=device),
            slot_mapping=torch.full((max_tokens,), -1, dtype=torch.int64, device=device),
            block_tables=torch.zeros(max_seqs, self.max_blocks, dtype=torch.int32, device=device),
            seq_lens=torch.full((max_seqs,), self.query_len, dtype=torch.int32, device=device),
            query_start_loc={q: torch.arange(0, (max_seqs + 1) * q, q, dtype=torch.int32, device=device)
                             for q in {q for _, q in keys}},
        )
        if self.head is not None:
            vocab = self.model.head_weight().shape[0]
            self.outputs = GraphHead(
                logits=torch.zeros(max_tokens, vocab, dtype=torch.float32, device=device),
                greedy=torch.zeros(max_tokens, dtype=torch.int64, device=device),
                greedy_logprobs=torch.zeros(max_tokens, dtype=torch.float32, device=device),
                accepted=torch.zeros(max_seqs, dtype=torch.int64, device=device),
                packed=torch.zeros(2 * max_tokens + max_seqs, dtype=torch.float64, device=device),
            )
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_reserved(device)
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for size, q in sorted(keys, key=lambda key: (key[0] * key[1], key[1]), reverse=True):
            began = time.perf_counter()
            self._run(size, q)  # warm-up: compiles kernels and settles allocator state outside capture
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._run(size, q)  # (size * q, hidden)
            self.graphs[size, q] = (graph, out)
            if q > 1:
                torch.cuda.synchronize(device)
                self.verify_capture_seconds += time.perf_counter() - began
        torch.cuda.synchronize(device)
        self.capture_seconds = time.perf_counter() - started
        self.capture_bytes = torch.cuda.memory_reserved(device) - before
        verifying = (f" and {len(self.verify_sizes)} verification graphs (batch {','.join(map(str, self.verify_sizes))}, "
                     f"{self.query_len} tokens each; {self.verify_capture_seconds:.2f}s of it)" if self.verify_sizes else "")
        log.info(
            "captured %d decode CUDA graphs (batch %s)%s in %.2fs, %.1f MiB in one pool",
            len(self.sizes), ",".join(map(str, self.sizes)), verifying, self.capture_seconds, self.capture_bytes / 2**20,
        )

    def try_replay(self, inputs: ModelInputs) -> Replayed | None:
        """The step's results by graph replay, or None to run it eagerly."""
        static = self.static
        num = inputs.seq_lens.shape[0]
        tokens = inputs.input_ids.shape[0]
        q = graph_query_len(num, inputs.num_decodes, tokens, inputs.max_query_len)
        width = inputs.block_tables.shape[1]
        sizes = self.buckets(q)
        if static is None or not sizes or num > sizes[-1] or width > self.max_blocks:
            return None
        size = next(s for s in sizes if s >= num)
        static.input_ids[:tokens].copy_(inputs.input_ids)
        static.positions[:tokens].copy_(inputs.positions)
        static.slot_mapping[:tokens].copy_(inputs.slot_mapping)
        static.slot_mapping[tokens : size * q].fill_(-1)
        static.block_tables[:num, :width].copy_(inputs.block_tables)
        static.seq_lens[:num].copy_(inputs.seq_lens)
        static.seq_lens[num:size].fill_(q)
        graph, out = self.graphs[size, q]
        graph.replay()
        self.replays[q] = self.replays.get(q, 0) + 1
        head = self.outputs
        if head is None:
            return Replayed(out[:tokens])
        packed = None
        if tokens == size * q:  # no padding rows: the bucket's packed results are the step's
            packed = head.packed[: 2 * tokens + (num if q > 1 else 0)]
        return Replayed(out[:tokens], head.logits[:tokens], head.greedy[:tokens], head.greedy_logprobs[:tokens],
                        head.accepted[:num] if q > 1 else None, packed)

    def _run(self, size: int, q: int) -> torch.Tensor:
        static = self.static
        assert static is not None
        tokens = size * q
        meta = AttentionMetadata(
            slot_mapping=static.slot_mapping[:tokens],
            block_tables=static.block_tables[:size],
            seq_lens=static.seq_lens[:size],
            query_start_loc=static.query_start_loc[q][: size + 1],
            kv_caches=self.kv_caches,
            max_query_len=q,
            decode_query_len=q,  # every sequence decodes: the decode kernel, q queries each
            decode_tokens=tokens,
        )
        with forward_context(meta, self.backend):
            out: torch.Tensor = self.model(static.input_ids[:tokens], static.positions[:tokens])
        if self.head is not None and self.outputs is not None:
            run_head(self.head, out[:, : self.hidden_size], self.outputs, q, static.input_ids[:tokens])
        return out


def capture_decode_graphs(runner: ModelRunner) -> DecodeGraphs | None:
    """Graphs for the runner's decode buckets (config.cuda_graph_sizes) and, when it speculates,
    its verification buckets; None when off or on CPU."""
    config = runner.config
    sizes = config.cuda_graph_sizes
    if runner.device.type != "cuda" or not sizes:
        return None
    # Drafts per request: the speculator's heads where it has them, else n-gram's --speculate.
    speculator = runner.speculator
    drafts = speculator.num_heads if speculator is not None else (config.speculate or 0)
    max_speculating = min(config.max_batch_size, config.speculate_max_batch_size)
    # Unsharded, the LM head and the greedy argmax go into the graphs too (unless --graph-head is off).
    head = runner.model.compute_logits if runner.shards is None and config.graph_head else None
    graphs = DecodeGraphs(
        model=runner.model,
        kv_caches=runner.kv.layers,
        sizes=sizes,
        max_blocks=-(-runner.max_model_len // runner.block_size),
        backend=runner.attention,
        query_len=1 + drafts,
        verify_sizes=verify_buckets(sizes, max_speculating) if drafts else (),
        head=head,
        hidden_size=runner.model.cfg.hidden_size,
    )
    with torch.inference_mode():
        graphs.capture(runner.device)
    return graphs
