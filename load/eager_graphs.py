"""The decode and verification graphs' replay (worker/cuda_graphs.py) run eagerly on the CPU: a
step of a graph's shape runs its forward, then the graphs' head over its rows (`run_head`), and
hands back what a replay would. So a CPU run takes the host path of a GPU step whose graph ran
the head (tokens, acceptance and packed results from the replay), without a GPU: what
load/spec_host_cost.py times, and what tests/worker/test_cuda_graph_head.py checks the runner's
use of. Every step is its own bucket (no padding rows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from worker.attention import forward_context
from worker.cuda_graphs import GraphHead, Replayed, graph_query_len, run_head
from worker.input_builder import ModelInputs

if TYPE_CHECKING:
    from worker.model_runner import ModelRunner

__all__ = ["EagerGraphs", "head_outputs"]


def head_outputs(rows: int, vocab: int, seqs: int) -> GraphHead:
    """The head's output buffers for `rows` rows of `seqs` sequences, filled with values no result has."""
    return GraphHead(torch.full((rows, vocab), float("nan")), torch.full((rows,), -1, dtype=torch.int64),
                     torch.full((rows,), float("nan")), torch.full((seqs,), -1, dtype=torch.int64),
                     torch.full((2 * rows + seqs,), float("nan"), dtype=torch.float64))


class EagerGraphs:
    """Stands in for the runner's DecodeGraphs: decode steps (q = 1) and, with `query_len` > 1,
    verification steps of that q."""

    def __init__(self, runner: ModelRunner, query_len: int = 1) -> None:
        self.runner = runner
        self.query_len = query_len
        self.replays: dict[int, int] = {}  # q -> steps "replayed"

    def try_replay(self, inputs: ModelInputs) -> Replayed | None:
        num, tokens = inputs.seq_lens.shape[0], inputs.input_ids.shape[0]
        q = graph_query_len(num, inputs.num_decodes, tokens, inputs.max_query_len)
        if q not in (1, self.query_len) or q == 0:
            return None
        runner = self.runner
        meta = runner.attention.prepare_metadata(inputs, runner.kv.layers)
        with forward_context(meta, runner.attention):
            hidden = runner.model(inputs.input_ids, inputs.positions)  # (T, hidden)
        outputs = head_outputs(tokens, runner.model.head_weight().shape[0], num)
        run_head(runner.model.compute_logits, hidden, outputs, q, inputs.input_ids)
        self.replays[q] = self.replays.get(q, 0) + 1
        accepted = outputs.accepted if q > 1 else None
        packed = outputs.packed[: 2 * tokens + (num if q > 1 else 0)]
        return Replayed(hidden, outputs.logits, outputs.greedy, outputs.greedy_logprobs, accepted, packed)
