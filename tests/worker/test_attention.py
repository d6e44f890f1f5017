"""The attention backend: a mixed step (decodes first, then prompt chunks) is split between the
decode and varlen kernels, and gives what one call over the whole batch gives."""

from __future__ import annotations

import pytest
import torch

from common.sampling_params import SamplingParams
from genfleet_kernels import reference as ref
from worker import ops
from worker.attention import PagedAttentionBackend
from worker.batch import ScheduledBatch, ScheduledRequest
from worker.input_builder import build_inputs
from worker.kv_cache import KVLayer


def _mixed_batch() -> ScheduledBatch:
    params = SamplingParams(max_new_tokens=4)
    reqs = [
        ScheduledRequest("d1", [11], 20, [0, 1], True, params),  # decode at position 20
        ScheduledRequest("d2", [12], 3, [2], True, params),  # decode at position 3
        ScheduledRequest("p1", [1, 2, 3, 4, 5], 8, [3, 4], True, params),  # chunk after 8 cached tokens
        ScheduledRequest("p2", [6, 7, 8], 0, [5], True, params),  # a new short prompt
    ]
    return ScheduledBatch(0, reqs, 2, sum(len(r.token_ids) for r in reqs))


@pytest.mark.parametrize("heads,kv_heads", [(4, 1), (8, 2), (3, 3)])
def test_mixed_step_split_equals_one_call(heads: int, kv_heads: int) -> None:
    # Triton kernels on a GPU, the torch references on CPU: whichever the worker would use.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ops.use_device(device)
    torch.manual_seed(0)
    block_size, dim = 16, 32
    inputs = build_inputs(_mixed_batch(), block_size, device)
    assert inputs.num_decodes == 2 and inputs.max_query_len == 5
    cache = [KVLayer(torch.randn(6, block_size, kv_heads, dim, device=device),
                     torch.randn(6, block_size, kv_heads, dim, device=device))]
    backend = PagedAttentionBackend()
    meta = backend.prepare_metadata(inputs, cache)
    assert meta.num_decodes == 2 and meta.prefill_query_start_loc is not None
    assert meta.prefill_query_start_loc.tolist() == [0, 5, 8]
    # The prompts' rows are tensors of their own (views from row 2 would start 8 bytes off the
    # 16-byte alignment Triton specializes on), holding the same rows.
    assert meta.prefill_block_tables is not None and meta.prefill_seq_lens is not None
    assert meta.prefill_block_tables.storage_offset() == 0 == meta.prefill_seq_lens.storage_offset()
    assert meta.prefill_block_tables.tolist() == inputs.block_tables[2:].tolist()
    assert meta.prefill_seq_lens.tolist() == inputs.seq_lens[2:].tolist()
    tokens = inputs.input_ids.shape[0]
    q = torch.randn(tokens, heads, dim, device=device)
    k = torch.randn(tokens, kv_heads, dim, device=device)
    v = torch.randn(tokens, kv_heads, dim, device=device)
    split = backend.forward(meta, 0, q, k, v, dim**-0.5)
    whole_meta = backend.prepare_metadata(inputs, cache)
    whole_meta.num_decodes, whole_meta.prefill_query_start_loc = 0, None
    whole = backend.forward(whole_meta, 0, q, k, v, dim**-0.5)
    assert split.shape == (tokens, heads, dim)
    torch.testing.assert_close(split, whole, atol=2e-3, rtol=2e-3)  # float32; TF32-free kernels


def test_pure_decode_and_pure_prefill_steps_are_not_split() -> None:
    params = SamplingParams(max_new_tokens=4)
    decodes = ScheduledBatch(0, [ScheduledRequest("d", [1], 4, [0], True, params)], 1, 1)
    prompt = ScheduledBatch(0, [ScheduledRequest("p", [1, 2, 3], 0, [0], True, params)], 0, 3)
    backend = PagedAttentionBackend()
    for batch in (decodes, prompt):
        meta = backend.prepare_metadata(build_inputs(batch, 16, torch.device("cpu")), [])
        assert meta.num_decodes == 0 and meta.prefill_query_start_loc is None


@pytest.mark.parametrize("decode", [True, False])
def test_pure_steps_go_to_the_kernel_of_their_shape(decode: bool) -> None:
    # An all-decode step reaches the decode kernel, a prompt step the varlen one; each gives what
    # the reference of the other kind gives on the same rows.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ops.use_device(device)
    torch.manual_seed(1)
    params = SamplingParams(max_new_tokens=4)
    if decode:
        reqs = [ScheduledRequest("a", [1], 20, [0, 1], True, params), ScheduledRequest("b", [2], 3, [2], True, params)]
    else:
        reqs = [ScheduledRequest("a", [1, 2, 3], 9, [0], True, params), ScheduledRequest("b", [4], 0, [2], True, params)]
    batch = ScheduledBatch(0, reqs, len(reqs) if decode else 0, sum(len(r.token_ids) for r in reqs))
    inputs = build_inputs(batch, 16, device)
    cache = [KVLayer(torch.randn(3, 16, 2, 32, device=device), torch.randn(3, 16, 2, 32, device=device))]
    meta = PagedAttentionBackend().prepare_metadata(inputs, cache)
    tokens = inputs.input_ids.shape[0]
    q = torch.randn(tokens, 4, 32, device=device)
    k, v = torch.randn(2, tokens, 2, 32, device=device).unbind(0)
    got = PagedAttentionBackend().forward(meta, 0, q, k, v, 32**-0.5)
    other = ref.prefill_attention if decode else ref.paged_decode_attention
    if not decode:  # the decode reference takes one-token rows only: compare the last row of each
        rows = inputs.query_start_loc[1:].long() - 1
        want = other(q[rows], *cache[0][:2], inputs.block_tables, inputs.seq_lens,
                     torch.arange(len(reqs) + 1, dtype=torch.int32, device=device), 32**-0.5)
        torch.testing.assert_close(got[rows], want, atol=2e-3, rtol=2e-3)
    else:
        want = other(q, *cache[0][:2], inputs.block_tables, inputs.seq_lens, inputs.query_start_loc, 32**-0.5)
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
