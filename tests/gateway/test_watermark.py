"""POST /watermark/detect on a real gateway: the score's shape, the per-call threshold, TGI-shaped
errors for bad bodies; and `watermark: true` reaching the worker from the TGI and OpenAI routes."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from common import watermark as wm
from tests.common.test_watermark import _all_green
from tests.gateway.harness import GatewayServer, ScriptedWorker

pytestmark = pytest.mark.timeout(60)


def _detect(gateway: GatewayServer, body: object) -> httpx.Response:
    return httpx.post(f"{gateway.url}/watermark/detect", json=body, timeout=10)


def test_green_token_ids_are_flagged_and_the_threshold_is_per_call(gateway: GatewayServer) -> None:
    ids = _all_green(50, 0.5)
    r = _detect(gateway, {"token_ids": ids})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {"z_score": pytest.approx(7.0), "p_value": pytest.approx(wm.score(ids, 0.5, 4.0).p_value),
                    "num_tokens_scored": 49, "green_fraction": 1.0, "watermarked": True}
    assert not _detect(gateway, {"token_ids": ids, "z_threshold": 7.5}).json()["watermarked"]


def test_text_is_scored_with_the_prompt_tokenizer(gateway: GatewayServer) -> None:
    text = "A plain sentence that nobody watermarked, written by hand for this test."
    body = _detect(gateway, {"inputs": text}).json()
    ids = gateway.ctx.tokenizer.encode(text, add_special_tokens=False)
    assert body == msgspec.to_builtins(wm.score(ids, 0.5, 4.0))
    assert body["num_tokens_scored"] == len(set(zip(ids, ids[1:]))) > 10
    assert not body["watermarked"]
    assert _detect(gateway, {"inputs": ""}).json()["num_tokens_scored"] == 0


@pytest.mark.parametrize("body, message", [
    ({}, "exactly one of"),
    ({"inputs": "a b", "token_ids": [1, 2]}, "exactly one of"),
    ({"inputs": 5}, "`inputs` must be a string"),
    ({"token_ids": [1, -2]}, "`token_ids` must be a list"),
    ({"token_ids": [1, True]}, "`token_ids` must be a list"),
    ({"token_ids": "1 2"}, "`token_ids` must be a list"),
    ({"inputs": "a", "z_threshold": "high"}, "`z_threshold` must be a number"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_bodies_get_tgi_shaped_422s(gateway: GatewayServer, body: object, message: str) -> None:
    r = _detect(gateway, body)
    assert r.status_code == 422 and r.json()["error_type"] == "validation"
    assert message in r.json()["error"]


def test_bad_json_is_a_400(gateway: GatewayServer) -> None:
    r = httpx.post(f"{gateway.url}/watermark/detect", content=b"{not json", timeout=10)
    assert r.status_code == 400 and r.json()["error_type"] == "bad_request"


def test_watermark_flag_travels_to_the_worker(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    tgi = {"inputs": "Hello", "parameters": {"max_new_tokens": 2, "watermark": True}}
    assert httpx.post(f"{gateway.url}/generate", json=tgi, timeout=30).status_code == 200
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "watermark": True}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=chat, timeout=30).status_code == 200
    plain = {"prompt": "Hello", "max_tokens": 2}
    assert httpx.post(f"{gateway.url}/v1/completions", json=plain, timeout=30).status_code == 200
    assert [r.params.watermark for r in worker.received] == [True, True, False]
    bad = {"prompt": "Hello", "max_tokens": 2, "watermark": "yes"}
    r = httpx.post(f"{gateway.url}/v1/completions", json=bad, timeout=30)
    assert r.status_code == 422 and "watermark" in r.text
