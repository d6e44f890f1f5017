"""--speculate through the whole fleet: real Redis, gateway and worker processes, the default
model. Streams relay the several tokens a verification step accepts, token for token what
transformers' greedy generate gives; /info names the method and N. Medusa heads given as TGI
takes them (--model-id naming the heads' directory) serve the same tokens, and so does an
EAGLE-3 draft model given to `genfleet serve` with --speculative-model."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from genfleet.embedded_redis import free_port
from tests.integration.fleet import FleetProcesses, wait_healthy
from load.speculator_heads import write_eagle3, write_medusa
from tests.integration.test_e2e import MAX_NEW, PROMPTS, _stream, reference_tokens  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def fleet(redis_server, default_model_dir: Path) -> Iterator[FleetProcesses]:  # type: ignore[no-untyped-def]
    processes = FleetProcesses(redis_server.url, "e2e-spec").start(
        num_workers=1, worker_args=("--max-batch-total-tokens", "8192", "--speculate", "4"),
        gateway_args=("--max-input-tokens", "512", "--max-total-tokens", "1024"),
    )
    yield processes
    processes.stop()


def test_streams_are_greedy_token_for_token(fleet: FleetProcesses, reference_tokens: dict[str, list[int]]) -> None:
    info = httpx.get(f"{fleet.base_url}/info", timeout=10).json()
    assert info["speculate"] == 4 and info["speculation"] == "ngram"
    for prompt in PROMPTS:
        _, ids, last = _stream(fleet.base_url, prompt)
        assert ids == reference_tokens[prompt], prompt
        assert last["details"]["generated_tokens"] == MAX_NEW


def test_medusa_heads_given_as_the_model_id_as_in_tgi(redis_server, default_model_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      reference_tokens: dict[str, list[int]]) -> None:
    # TGI's way: --model-id names the heads' directory, whose base_model_name_or_path is the model;
    # the gateway reads the model's tokenizer through it, the worker loads both.
    heads = write_medusa(tmp_path / "medusa", 576, 49152, heads=3, own_projection=False, base=str(default_model_dir))
    named = ("--model-id", str(heads))
    processes = FleetProcesses(redis_server.url, "e2e-medusa").start(
        num_workers=1, worker_args=(*named, "--max-batch-total-tokens", "8192"),
        gateway_args=(*named, "--max-input-tokens", "512", "--max-total-tokens", "1024"),
    )
    try:
        info = httpx.get(f"{processes.base_url}/info", timeout=10).json()
        assert info["speculate"] == 3 and info["speculation"] == "medusa"
        prompt = PROMPTS[0]
        _, ids, last = _stream(processes.base_url, prompt)
        assert ids == reference_tokens[prompt]
        assert last["details"]["generated_tokens"] == MAX_NEW
    finally:
        processes.stop()


def test_an_eagle3_draft_through_genfleet_serve(default_model_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                               reference_tokens: dict[str, list[int]]) -> None:
    # A random draft (its drafts are rarely right): the tokens are the model's all the same.
    draft = write_eagle3(tmp_path / "eagle3", 576, 49152, heads=9, kv_heads=3, intermediate=256, draft_vocab=2048)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "genfleet", "serve", "--port", str(port), "--hostname", "127.0.0.1",
         "--max-batch-total-tokens", "4096", "--key-prefix", "e2e-eagle3", "--speculate", "4",
         "--speculative-model", str(draft)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, [proc], timeout=180)
        info = httpx.get(f"{base}/info", timeout=10).json()
        assert info["speculate"] == 4 and info["speculation"] == "eagle3"
        for prompt in PROMPTS[:2]:
            _, ids, last = _stream(base, prompt)
            assert ids == reference_tokens[prompt], prompt
            assert last["details"]["generated_tokens"] == MAX_NEW
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        drafted = [line for line in metrics.splitlines() if line.startswith("genfleet_worker_draft_tokens_total")]
        assert drafted and float(drafted[0].split()[-1]) > 0, drafted
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
