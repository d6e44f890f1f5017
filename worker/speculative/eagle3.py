"""EAGLE-3 draft model (Li et al., arXiv 2503.01840), `--speculative-model DIR`: one decoder layer
that runs beside the target and proposes k tokens per request and step, chained.

The draft's row for position p reads two inputs: the embedding of the token at p + 1 and a
hidden state. From the target that state is `fc` of the residual stream entering three of its
layers (low, middle, high: CausalLM.aux_layers, returned by the target's own forward) at p; from
the draft's own previous row it is that row's output. The layer normalises the embedding
(input_layernorm) and the state (hidden_norm), attends over their concatenation (2 * hidden ->
q, k, v) with its own one-layer paged KV, adds the state back as the residual, then the MLP; the
last norm and a reduced LM head over `draft_vocab_size` tokens give the draft, mapped to the
target's vocabulary by `d2t` (draft id + d2t[id]).

A step that speculates runs it in two parts after the target sampled (`draft`):
1. extension: one row per token the target computed this step (worker/speculative/eagle3_plan.py
   says which token each row takes), written to the draft KV at the same slots as the target's
   (the draft pool has the target's block ids, plus scratch blocks);
2. chain: from each proposer's last kept token, k - 1 more one-token rows, each taking the
   previous row's draft and output; k greedy drafts per proposer in all.
Drafts are proposals only: the next step verifies them like any other (worker/speculative/
verify.py), so the output is the target's whatever the draft says.

Prefix caching shares the draft's KV with the blocks: a cached block's last position was
extended with the token after it in the request that computed it, which may differ; the draft
then reads one slightly different position (its proposals, never the output, can change).
Steps that do not speculate (the per-step turn-down) skip the extension, so a request's draft
KV has gaps for the tokens computed then. The draft runs eagerly (no CUDA graph): its shapes
change every step, and it makes no host synchronisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from worker.attention import PagedAttentionBackend, forward_context
from worker.input_builder import ModelInputs, upload
from worker.kv_cache import KVCache, bytes_per_block
from worker.logits_layout import LogitsLayout
from worker.models.layers import DecoderLayer, GatedMLP, RMSNorm, SelfAttention, linear
from worker.models.rotary import build_cos_sin_cache
from worker.speculative.eagle3_plan import DraftPlan, scratch_blocks_per_proposer
from worker.speculative.heads import SpeculatorError

if TYPE_CHECKING:
    from worker.models import CausalLM, ModelConfig

__all__ = ["Eagle3Draft"]


class Eagle3Draft(nn.Module):
    method = "eagle3"

    def __init__(self, cfg: ModelConfig, target_hidden: int, aux_layers: tuple[int, ...], draft_vocab: int,
                 num_drafts: int, norm_before_residual: bool, max_position: int, device: torch.device) -> None:
        super().__init__()
        hidden, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.cfg = cfg
        self.num_heads = num_drafts  # drafts per proposer and step: the resolved --speculate
        self.aux_layers = aux_layers  # the target layers whose input `fc` fuses, in its order
        self.norm_before_residual = norm_before_residual  # the residual is the normed state
        self.fc = nn.Linear(len(aux_layers) * target_hidden, hidden, bias=False)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.hidden_norm = RMSNorm(hidden, eps)
        self.self_attn = SelfAttention(cfg, 0)
        q_size, kv_size = self.self_attn.q_size, self.self_attn.kv_size
        self.self_attn.qkv_proj = nn.Linear(2 * hidden, q_size + 2 * kv_size, bias=cfg.qkv_bias)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.mlp = GatedMLP(hidden, cfg.intermediate_size, cfg.hidden_act)
        self.norm = RMSNorm(hidden, eps)
        self.lm_head = nn.Linear(hidden, draft_vocab, bias=False)
        # (vocab, hidden): the draft's own, or the target's (`bind`) when it has none.
        self.embed: torch.Tensor | None = None
        # (draft_vocab,) int64: the target id of each draft id (d2t[i] + i).
        self.draft_to_target = torch.arange(draft_vocab, device=device)
        # (1, max_position, D) float32: its own rope table, as long as the target's context
        # plus the chain's positions past it.
        with torch.device("cpu"):  # the loader builds the layers on the meta device, then fills them
            table = build_cos_sin_cache(cfg.head_dim, max_position, cfg.rope_theta, cfg.rope_scaling)
        self.cos_sin_cache = table.unsqueeze(0).to(device)
        self.kv: KVCache | None = None
        self.scratch_base = 0  # the first scratch block of `kv`: after the target's block ids

    # -- its KV ------------------------------------------------------------------------------
    def kv_bytes_per_block(self, block_size: int, dtype: torch.dtype) -> int:
        """What one block of the target's pool adds to the draft's (one layer)."""
        return bytes_per_block(1, block_size, self.cfg.num_kv_heads, self.cfg.head_dim, dtype)

    def allocate_kv(self, num_blocks: int, block_size: int, max_proposers: int, dtype: torch.dtype,
                    device: torch.device) -> None:
        """One layer over the target's `num_blocks` block ids, and scratch blocks for the chains."""
        scratch = max(1, max_proposers) * scratch_blocks_per_proposer(self.num_heads, block_size)
        self.kv = KVCache.allocate(1, num_blocks + scratch, block_size, self.cfg.num_kv_heads, self.cfg.head_dim,
                                   dtype, device)
        self.scratch_base = num_blocks

    def bind(self, model: CausalLM) -> None:
        """Serve `model`: its forward returns the residual streams fused here, and its embedding
        is shared when the checkpoint has none."""
        if model.layer_cls is not DecoderLayer or model.cfg.kv_window:
            raise SpeculatorError(
                f"an EAGLE-3 draft reads the residual stream of a pre-norm decoder with full attention (Llama's); "
                f"{model.cfg.architecture} is not one: serve it with n-gram drafting (--speculate N alone)"
            )
        model.aux_layers = self.aux_layers
        if self.embed is None:
            self.embed = model.embed_tokens.weight

    # -- one step ----------------------------------------------------------------------------
    def draft(self, plan: DraftPlan, inputs: ModelInputs, aux: torch.Tensor, token_ids: torch.Tensor | None,
                num_accepted: torch.Tensor | None, backend: PagedAttentionBackend) -> torch.Tensor | None:
        """Extend the draft KV over the step's tokens; (R, k) int64 drafts per proposer (None if none).

        Args:
            plan: the step's host plan (eagle3_plan.plan_draft).
            inputs: the target's inputs of the step (positions, slots, block tables).
            aux: (T, 3 * target hidden) the target's residual streams at `aux_layers`.
            token_ids: (n,) int64 each sampling row's sample; None when nothing sampled.
            num_accepted: (V,) int64 drafts accepted per verifying request, or None.
        """
        assert self.kv is not None and self.embed is not None, "the draft model is not bound to a runner"
        device = aux.device
        t, k, r, w = plan.num_tokens, plan.num_known, plan.num_proposers, plan.table_width
        src, known, rows, spans, tables = upload(plan.flat, device).split([t, k, r, r, r * w])
        samples = token_ids if token_ids is not None else known[:0]
        ids = torch.cat([inputs.input_ids, samples, known])[src]  # (T,)
        state = linear(aux, self.fc)  # (T, hidden)
        meta = backend.prepare_metadata(inputs, self.kv.layers)
        with forward_context(meta, backend):
            state = self._layer(inputs.positions, ids, state)  # (T, hidden)
        if r == 0:
            return None
        if num_accepted is not None:  # a verifying proposer chains from its last accepted row
            rows = rows + torch.where(spans >= 0, num_accepted[spans.clamp(min=0)], 0)
        state, positions = state[rows], inputs.positions[rows]  # (R, hidden), (R,)
        tables = tables.view(r, w).to(torch.int32)  # (R, W)
        drafts = [self._greedy(state)]
        block_size = self.kv.block_size
        starts = torch.arange(r + 1, dtype=torch.int32, device=device)
        for _ in range(self.num_heads - 1):
            positions = positions + 1
            block = tables.gather(1, (positions // block_size).unsqueeze(1)).squeeze(1)  # (R,)
            chain = ModelInputs(
                input_ids=drafts[-1], positions=positions, slot_mapping=block.long() * block_size + positions % block_size,
                block_tables=tables, seq_lens=(positions + 1).to(torch.int32), query_start_loc=starts,
                logits_rows=rows[:0], layout=LogitsLayout(), max_query_len=1, num_decodes=r, decode_tokens=r,
            )
            with forward_context(backend.prepare_metadata(chain, self.kv.layers), backend):
                state = self._layer(positions, drafts[-1], state)  # (R, hidden)
            drafts.append(self._greedy(state))
        return torch.stack(drafts, dim=1)  # (R, k)

    def _layer(self, positions: torch.Tensor, ids: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """The decoder layer; returns its output before the last norm (the next row's state)."""
        assert self.embed is not None
        embeds = self.input_layernorm(F.embedding(ids, self.embed))  # (T, hidden)
        normed = self.hidden_norm(state)  # (T, hidden)
        residual = normed if self.norm_before_residual else state
        out = self.self_attn(positions, torch.cat([embeds, normed], dim=-1), self.cos_sin_cache)  # (T, hidden)
        out, residual = self.post_attention_layernorm(out, residual)
        return self.mlp(out) + residual  # type: ignore[no-any-return]

    def _greedy(self, state: torch.Tensor) -> torch.Tensor:
        logits = linear(self.norm(state), self.lm_head)  # (R, draft_vocab)
        return self.draft_to_target[logits.argmax(dim=-1)]  # (R,) int64 target ids
