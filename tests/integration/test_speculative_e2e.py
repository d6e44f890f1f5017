"""--speculate through the whole fleet: real Redis, gateway and worker processes, the default
model. Streams relay the several tokens a verification step accepts, token for token what
transformers' greedy generate gives; /info names the method and N."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.fleet import FleetProcesses
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
