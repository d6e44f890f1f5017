"""Attention over the paged KV cache, with its per-step metadata scoped to one forward pass.

A backend builds `AttentionMetadata` once per step (`prepare_metadata`); the runner enters
`forward_context(meta, backend)` and every layer's `attend(...)` reaches `backend.forward` from
there. Nesting is an error: one forward at a time per process. `PagedAttentionBackend` goes
through worker/ops.py, so the Triton kernels replace the torch references there on CUDA; a
backend with other metadata (e.g. split plans computed once per step) subclasses it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from worker import ops
from worker.input_builder import ModelInputs
from worker.kv_cache import KVLayer

__all__ = ["AttentionMetadata", "PagedAttentionBackend", "Rotary", "forward_context", "current_metadata", "attend"]


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (T,) int64 device: where each new token's K/V goes
    block_tables: torch.Tensor  # (B, max_blocks) int32 device
    seq_lens: torch.Tensor  # (B,) int32 device: cached + new tokens per sequence
    query_start_loc: torch.Tensor  # (B + 1,) int32 device
    kv_caches: list[KVLayer]  # per layer: k and v pages (and their scales when FP8)
    max_query_len: int  # 1 when every sequence decodes without drafts
    # Mixed steps: the first `num_decodes` sequences bring their last token each, and its drafts
    # when speculating (the batch puts decodes first), and go to the split-KV decode kernel, which
    # reads each KV head once for all of a sequence's queries; the rest go to the varlen kernel
    # with `prefill_query_start_loc` (rebased to 0).
    num_decodes: int = 0
    prefill_query_start_loc: torch.Tensor | None = None
    # The prompts' rows of block_tables and seq_lens, as tensors of their own: a view from row d
    # starts mid-allocation, and a pointer off 16 bytes is a new Triton specialization of the
    # prefill kernel (compiled at the first such step, while every request waits).
    prefill_block_tables: torch.Tensor | None = None
    prefill_seq_lens: torch.Tensor | None = None
    decode_query_len: int = 1  # the most tokens of a decode sequence (1 + its drafts)
    decode_tokens: int = 0  # host: the decode sequences' tokens, the first rows of q


@dataclass(slots=True)
class Rotary:
    """The rotary embedding a layer's q and k still need: applied with the KV store in one kernel."""

    positions: torch.Tensor  # (T,) int64
    cos_sin_cache: torch.Tensor  # (max_position, D) float32: the layer's table
    is_neox: bool = True


class PagedAttentionBackend:
    def prepare_metadata(self, inputs: ModelInputs, kv_caches: list[KVLayer]) -> AttentionMetadata:
        num_seqs, d = inputs.seq_lens.shape[0], inputs.num_decodes
        mixed = inputs.max_query_len > inputs.decode_query_len and 0 < d < num_seqs
        return AttentionMetadata(
            slot_mapping=inputs.slot_mapping,
            block_tables=inputs.block_tables,
            seq_lens=inputs.seq_lens,
            query_start_loc=inputs.query_start_loc,
            kv_caches=kv_caches,
            max_query_len=inputs.max_query_len,
            num_decodes=d if mixed else 0,
            prefill_query_start_loc=inputs.query_start_loc[d:] - inputs.decode_tokens if mixed else None,
            prefill_block_tables=inputs.block_tables[d:].clone() if mixed else None,
            prefill_seq_lens=inputs.seq_lens[d:].clone() if mixed else None,
            decode_query_len=inputs.decode_query_len,
            decode_tokens=inputs.decode_tokens,
        )

    def forward(
        self,
        meta: AttentionMetadata,
        layer_idx: int,
        q: torch.Tensor,  # (T, H, D)
        k: torch.Tensor,  # (T, n_kv, D)
        v: torch.Tensor,  # (T, n_kv, D)
        scale: float,
        window: int = 0,
        softcap: float = 0.0,
        rotary: Rotary | None = None,
    ) -> torch.Tensor:  # (T, H, D)
        kv = meta.kv_caches[layer_idx]
        if rotary is not None:  # q and k rotated, k and v stored, in one launch on CUDA
            q = ops.rotary_store_kv(rotary.positions, q, k, v, rotary.cos_sin_cache, kv.k, kv.v, meta.slot_mapping,
                                    kv.k_scale, kv.v_scale, rotary.is_neox)
        else:
            ops.store_kv(k, v, kv.k, kv.v, meta.slot_mapping, kv.k_scale, kv.v_scale)
        scales = (kv.k_scale, kv.v_scale)  # None, None unless the pages are FP8
        layer = {"window": window, "softcap": softcap}
        # The one place that picks a kernel by the step's shape (a host int: no device sync).
        if meta.max_query_len <= meta.decode_query_len:  # every sequence decodes (its drafts too)
            return ops.paged_decode_attention(  # type: ignore[no-any-return]
                q, kv.k, kv.v, meta.block_tables, meta.seq_lens, meta.query_start_loc, scale, *scales, **layer,
                max_query_len=meta.max_query_len,
            )
        d = meta.num_decodes
        if d and meta.prefill_query_start_loc is not None and meta.prefill_block_tables is not None \
                and meta.prefill_seq_lens is not None:
            t = meta.decode_tokens
            decoded = ops.paged_decode_attention(
                q[:t], kv.k, kv.v, meta.block_tables[:d], meta.seq_lens[:d], meta.query_start_loc[: d + 1], scale,
                *scales, **layer, max_query_len=meta.decode_query_len,
            )
            prefilled = ops.prefill_attention(
                q[t:], kv.k, kv.v, meta.prefill_block_tables, meta.prefill_seq_lens, meta.prefill_query_start_loc, scale,
                *scales, **layer,
            )
            return torch.cat([decoded, prefilled])
        return ops.prefill_attention(  # type: ignore[no-any-return]
            q, kv.k, kv.v, meta.block_tables, meta.seq_lens, meta.query_start_loc, scale, *scales, **layer
        )


_DEFAULT_BACKEND = PagedAttentionBackend()
# Set only inside forward_context; a context variable keeps concurrent threads apart.
_FORWARD: contextvars.ContextVar[tuple[AttentionMetadata, PagedAttentionBackend] | None] = contextvars.ContextVar(
    "genfleet_forward", default=None
)


@contextlib.contextmanager
def forward_context(
    meta: AttentionMetadata, backend: PagedAttentionBackend = _DEFAULT_BACKEND
) -> Iterator[AttentionMetadata]:
    if _FORWARD.get() is not None:
        raise RuntimeError("forward_context is not re-entrant: a forward pass is already running")
    token = _FORWARD.set((meta, backend))
    try:
        yield meta
    finally:
        _FORWARD.reset(token)


def _scope() -> tuple[AttentionMetadata, PagedAttentionBackend]:
    scope = _FORWARD.get()
    if scope is None:
        raise RuntimeError("attention called outside forward_context")
    return scope


def current_metadata() -> AttentionMetadata:
    return _scope()[0]


def attend(
    layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
    window: int = 0, softcap: float = 0.0, rotary: Rotary | None = None,
) -> torch.Tensor:
    """The layers' entry: the current step's backend stores k, v and attends (shapes as its forward).

    window > 0: the layer's sliding window (each query sees its last `window` keys); softcap > 0:
    its scores are soft-capped (softcap * tanh(score / softcap)); rotary: q and k are not rotated
    yet, and the store rotates them (ops.rotary_store_kv).
    """
    meta, backend = _scope()
    return backend.forward(meta, layer_idx, q, k, v, scale, window, softcap, rotary)
