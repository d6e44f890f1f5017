"""The watermark stage: bit-exact green lists on each device, a no-op for other rows, and the
same green list for a request whatever else shares its batch (TGI seeds short rows with a pad)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import torch

from common import watermark as wm
from common.config import FleetConfig
from common.sampling_params import SamplingParams
from tests.worker.test_engine_model import _engine, _tiny_prompts
from tests.worker.test_model_runner import _tiny_llama
from worker import sampler
from worker.batch import ScheduledRequest
from worker.engine import LLMEngine
from worker.request import Request
from worker.watermark import Watermark, green_mask

V = 49152
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
def test_green_mask_is_the_plain_python_hash_bit_for_bit(device: str) -> None:
    rng = random.Random(0)
    prev = [0, 1, V - 1, 2**31 + 5, 2**62 + 3] + [rng.randrange(V) for _ in range(11)]
    threshold = wm.green_threshold(0.5)
    mask = green_mask(torch.tensor(prev, device=device), V, threshold).cpu()  # (16, V)
    for r, p in enumerate(prev):
        for tok in rng.sample(range(V), 400):
            assert bool(mask[r, tok]) == wm.is_green(p, tok, threshold), (p, tok)
    assert abs(mask.float().mean().item() - 0.5) < 0.01


def test_only_watermarked_rows_move_and_by_delta_on_green_tokens() -> None:
    logits = torch.randn(4, V)
    prev = torch.tensor([10, 20, 30, 40])
    biased = Watermark(0.25, 3.0).apply(logits, torch.tensor([1, 3]), prev)
    assert torch.equal(biased[[0, 2]], logits[[0, 2]])
    green = green_mask(prev[[1, 3]], V, wm.green_threshold(0.25))
    torch.testing.assert_close(biased[[1, 3]] - logits[[1, 3]], green.float() * 3.0)


def _req(params: SamplingParams, last: int) -> ScheduledRequest:
    return ScheduledRequest("r", [last], 5, [0], True, params, all_token_ids=[1, 2, last])


def test_sampler_biases_greedy_and_sampled_rows_and_leaves_the_others() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, V)
    plain = SamplingParams(max_new_tokens=1, do_sample=True, temperature=0.7)
    marked = SamplingParams(max_new_tokens=1, watermark=True)  # greedy
    marked_sampled = SamplingParams(max_new_tokens=1, do_sample=True, temperature=0.7, watermark=True)
    reqs = [_req(plain, 3), _req(marked, 4), _req(plain, 5), _req(marked_sampled, 6)]
    prev = torch.tensor([3, 4, 5, 6])
    strong = Watermark(0.5, 100.0)
    got = sampler.sample(logits, sampler.prepare(reqs, V, torch.device("cpu"), watermark=strong), prev)
    unmarked = sampler.sample(logits[[0, 2]], sampler.prepare([reqs[0], reqs[2]], V, torch.device("cpu")))
    assert got.token_ids[[0, 2]].tolist() == unmarked.token_ids.tolist()
    threshold = wm.green_threshold(0.5)
    assert wm.is_green(4, int(got.token_ids[1]), threshold) and wm.is_green(6, int(got.token_ids[3]), threshold)
    # Reported logprobs stay those of the model's distribution, as TGI's do.
    torch.testing.assert_close(got.logprobs[1], torch.log_softmax(logits[1], -1)[got.token_ids[1]])
    with pytest.raises(ValueError, match="watermark"):
        sampler.prepare(reqs, V, torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("watermark"))[0]


def _generate(engine: LLMEngine, prompts: dict[str, list[int]], params: SamplingParams, offset: int = 0) -> dict[str, list[int]]:
    for rid, ids in prompts.items():
        engine.add_request(Request(rid, ids, params, 7, time.time(), num_generated_offset=offset))
    out: dict[str, list[int]] = {rid: [] for rid in prompts}
    while engine.has_unfinished_requests():
        for o in engine.step():
            out[o.key].extend(o.new_token_ids)
    return out


@pytest.mark.parametrize("overlap", [False, True], ids=["one-step", "overlapped"])
def test_green_list_is_the_same_alone_or_in_a_batch_of_16(tiny_dir: Path, overlap: bool) -> None:
    # Sixteen prompts of different lengths in one batch: each row is seeded with its own last token.
    # delta is large enough that every greedy pick is green for the right predecessor only.
    engine = _engine(tiny_dir, overlap, max_batch_prefill_tokens=512, fleet=FleetConfig(watermark_delta=50.0))
    params = SamplingParams(max_new_tokens=12, watermark=True, ignore_eos=True)
    crowd = _tiny_prompts(16)
    together = _generate(engine, crowd, params)
    assert max(len(p) for p in crowd.values()) > min(len(p) for p in crowd.values())
    threshold = wm.green_threshold(0.5)
    for rid, ids in crowd.items():
        seq = ids[-1:] + together[rid]
        assert all(wm.is_green(a, b, threshold) for a, b in zip(seq, seq[1:])), rid
    for rid in ("p0", "p7"):
        assert _generate(engine, {rid: crowd[rid]}, params)[rid] == together[rid]
    # Without the bias the same greedy requests would not stay green.
    plain = _generate(engine, crowd, SamplingParams(max_new_tokens=12, ignore_eos=True))
    assert plain != together


def test_a_continuation_keeps_the_watermark(tiny_dir: Path) -> None:
    # Lost after 5 tokens, the request resumes elsewhere with them in its prompt: same tokens.
    engine = _engine(tiny_dir, fleet=FleetConfig(watermark_delta=4.0))
    prompt = _tiny_prompts(1)["p0"]
    params = SamplingParams(max_new_tokens=16, do_sample=True, temperature=0.9, watermark=True, ignore_eos=True)
    full = _generate(engine, {"full": prompt}, params)["full"]
    rest = SamplingParams(max_new_tokens=11, do_sample=True, temperature=0.9, watermark=True, ignore_eos=True)
    cont = _generate(engine, {"cont": prompt + full[:5]}, rest, offset=5)["cont"]
    assert full[:5] + cont == full
