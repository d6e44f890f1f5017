"""The watermark end to end with the real default model: 20 sampled answers of 200 tokens through
/generate with `watermark: true` are flagged by POST /watermark/detect, also with every fourth word
replaced; the same prompts without it are not. All 40 requests are sent at once, so they batch
(load/watermark_quality.py measures the same on the in-process engine, with perplexities)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from load.watermark_quality import TOPICS, replace_every_fourth_word
from tests.integration.fleet import FleetProcesses

pytestmark = pytest.mark.timeout(600)
NEW = 200


@pytest.fixture(scope="module")
def fleet(redis_server) -> Iterator[FleetProcesses]:  # type: ignore[no-untyped-def]
    processes = FleetProcesses(redis_server.url, "wm").start(
        num_workers=1, worker_args=("--max-batch-total-tokens", "16384"),
        gateway_args=("--max-concurrent-requests", "64"))
    yield processes
    processes.stop()


def _answer(base: str, topic: str, seed: int, watermark: bool) -> str:
    prompt = f"<|im_start|>user\nWrite an essay about {topic}.<|im_end|>\n<|im_start|>assistant\n"
    body = {"inputs": prompt, "parameters": {"max_new_tokens": NEW, "do_sample": True, "seed": seed,
                                             "ignore_eos": True, "watermark": watermark, "details": True}}
    r = httpx.post(f"{base}/generate", json=body, timeout=540)
    assert r.status_code == 200, r.text
    assert r.json()["details"]["generated_tokens"] == NEW
    return str(r.json()["generated_text"])


def _detect(base: str, text: str) -> dict:  # type: ignore[type-arg]
    r = httpx.post(f"{base}/watermark/detect", json={"inputs": text}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_watermarked_answers_are_flagged_and_plain_ones_are_not(fleet: FleetProcesses) -> None:
    jobs = [(topic, 1000 + i, marked) for marked in (True, False) for i, topic in enumerate(TOPICS)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        texts = list(pool.map(lambda job: _answer(fleet.base_url, *job), jobs))
    marked = [_detect(fleet.base_url, t) for t, job in zip(texts, jobs) if job[2]]
    plain = [_detect(fleet.base_url, t) for t, job in zip(texts, jobs) if not job[2]]
    edited = [_detect(fleet.base_url, replace_every_fourth_word(t, i)) for i, (t, job) in enumerate(zip(texts, jobs))
              if job[2]]
    assert len(marked) == len(plain) == 20
    assert all(d["watermarked"] and d["z_score"] > 4 for d in marked), [d["z_score"] for d in marked]
    # Unwatermarked z-scores are standard normal: 20 of them all within +-2 would fail 60% of
    # seedings, so each is held to +-3 and their mean to +-0.75 (3.4 standard errors).
    plain_z = [d["z_score"] for d in plain]
    assert all(not d["watermarked"] and abs(d["z_score"]) < 3 for d in plain), plain_z
    assert abs(sum(plain_z) / len(plain_z)) < 0.75, plain_z
    assert all(d["z_score"] > 2 for d in edited), [d["z_score"] for d in edited]
    assert all(d["num_tokens_scored"] > 100 for d in marked + plain)
