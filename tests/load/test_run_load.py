"""The load generator against a loopback server that streams as TGI and OpenAI servers do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from load.apis import get_api
from load.report import percentile, summarize
from load.run_load import main, parse_target, run_closed_loop, run_open_loop
from load.sse_client import Target
from load.workloads import PromptSpec, load_sharegpt, synthetic_mix
from tests.load.sse_server import serving

DELAY = 0.002


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serving(DELAY) as p:
        yield p


def _specs(n: int, max_new: int = 5, prompt: str = "hello") -> list[PromptSpec]:
    return [PromptSpec(f"{prompt} {i}", max_new) for i in range(n)]


async def test_closed_loop_tgi_records_every_token(port: int) -> None:
    target = Target("127.0.0.1", port)
    result = await run_closed_loop(get_api("tgi"), target, _specs(12, 6), concurrency=4, duration=30,
                                   timeout=10, label="users-4", meta={"mode": "closed", "load": 4})
    assert len(result.records) == 12
    assert all(r.error is None and r.output_tokens == 6 for r in result.records)
    assert all(r.ttft is not None and DELAY <= r.ttft <= r.e2e for r in result.records)
    # 5 gaps per request, typically the server's delay (client jitter can shorten a single gap).
    assert len(result.itl) == 12 * 5 and percentile(result.itl, 50) >= DELAY * 0.9
    assert sum(result.token_times) == 72
    s = summarize(result)
    assert s["completed"] == 12 and s["failed"] == 0 and s["total_output_tokens"] == 72
    assert s["output_token_throughput"] == pytest.approx(72 / result.duration)
    assert s["itl_ms"]["p50"] >= DELAY * 1000 * 0.9
    assert s["tpot_ms"]["p50"] >= DELAY * 1000 * 0.9


@pytest.mark.parametrize("api", ["openai", "chat"])
async def test_open_loop_openai_framings(port: int, api: str) -> None:
    target = Target("127.0.0.1", port)
    result = await run_open_loop(get_api(api, model="m"), target, _specs(10, 4), rate=100.0, duration=30,
                                 timeout=10, label="rate-100", meta={"mode": "open", "load": 100.0})
    assert [r.error for r in result.records] == [None] * 10
    assert all(r.output_tokens == 4 for r in result.records)
    starts = sorted(r.start for r in result.records)
    assert starts[-1] > starts[0]  # Poisson arrivals, not all at once


async def test_open_loop_stops_sending_at_the_duration(port: int) -> None:
    target = Target("127.0.0.1", port)
    result = await run_open_loop(get_api("tgi"), target, _specs(1000, 2), rate=50.0, duration=0.3,
                                 timeout=10, label="r", meta={})
    assert 3 <= len(result.records) < 100
    assert all(r.start <= 0.3 for r in result.records)


async def test_errors_are_recorded_not_raised(port: int) -> None:
    target = Target("127.0.0.1", port)
    specs = [PromptSpec("FAIL now", 3), PromptSpec("MIDERR later", 3), PromptSpec("fine", 3)]
    result = await run_closed_loop(get_api("tgi"), target, specs, concurrency=1, duration=30, timeout=10,
                                   label="e", meta={})
    errors = [r.error for r in result.records]
    assert "422" in errors[0] and "refused" in errors[0]
    assert errors[1] == "Request failed during generation"
    assert errors[2] is None
    closed = await run_closed_loop(get_api("tgi"), Target("127.0.0.1", _free_port()), _specs(1), 1, 30, 5, "x", {})
    assert closed.records[0].error is not None and "Error" in closed.records[0].error
    assert summarize(result)["failed"] == 2


def test_only_loopback_targets_unless_allowed() -> None:
    assert parse_target("http://127.0.0.1:8080", False).port == 8080
    assert parse_target("http://localhost:9", False, api_key="k").headers == (("Authorization", "Bearer k"),)
    with pytest.raises(ValueError, match="loopback"):
        parse_target("http://10.1.2.3:80", False)
    assert parse_target("http://10.1.2.3:80", True).host == "10.1.2.3"
    with pytest.raises(ValueError, match="http://"):
        parse_target("https://127.0.0.1", False)


def test_cli_sweep_writes_json_table_and_plots(port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--url", f"http://127.0.0.1:{port}", "--mode", "open", "--rate", "40,80,inf", "--num-requests", "8",
                 "--max-new-tokens", "4", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| rate-40 | 8/8 |" in printed and "| rate-inf | 8/8 |" in printed
    payload = json.loads((tmp_path / "rate-40.json").read_text())
    assert payload["summary"]["total_output_tokens"] == 32 and len(payload["requests"]) == 8
    assert payload["meta"]["mode"] == "open" and payload["meta"]["command"].startswith("python -m load.run_load")
    for name in ("latency_cdf.png", "throughput.png", "ttft_vs_load.png", "latency_vs_load.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "summary.md").read_text().startswith("| run |")


def test_cli_refuses_a_remote_target(tmp_path: Path) -> None:
    assert main(["--url", "http://10.1.2.3:80", "--out", str(tmp_path), "--no-progress", "--no-plots"]) == 2


def test_synthetic_mix_is_reproducible_and_mixed() -> None:
    a, b = synthetic_mix(200, seed=3), synthetic_mix(200, seed=3)
    assert a == b and a != synthetic_mix(200, seed=4)
    lengths = sorted(len(s.prompt.split()) for s in a)
    assert lengths[0] < 45 and lengths[-1] > 300  # short and long prompts both present
    assert all(s.max_new_tokens == 16 for s in synthetic_mix(5, max_new_tokens=16))


def test_sharegpt_file(tmp_path: Path) -> None:
    data = [
        {"conversations": [{"from": "human", "value": "Why is the sky blue?"}, {"from": "gpt", "value": "one two three " * 10}]},
        {"conversations": [{"from": "gpt", "value": "no human turn"}]},
        {"conversations": [{"from": "human", "value": "Name a prime."}, {"from": "gpt", "value": "Seven."}]},
    ]
    path = tmp_path / "share.json"
    path.write_text(json.dumps(data))
    specs = load_sharegpt(path, 2, seed=0)
    assert sorted(s.prompt for s in specs) == ["Name a prime.", "Why is the sky blue?"]
    budgets = {s.prompt: s.max_new_tokens for s in specs}
    assert budgets["Why is the sky blue?"] == 39 and budgets["Name a prime."] == 4
    assert len(load_sharegpt(path, 5)) == 5  # sampled with replacement past the file's size
    path.write_text("{}")
    with pytest.raises(ValueError):
        load_sharegpt(path, 1)


def test_percentile_interpolates_like_numpy() -> None:
    import numpy as np

    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for p in (0, 50, 90, 99, 100):
        assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
