"""The compose stack without Docker: the same commands and environment, as local processes.

Redis runs with a password and append-only persistence, as the compose file configures it; the
gateway and two workers run the exact `command:` and `environment:` of their compose services
(read from docker-compose.yml and the CPU override, with the service host names pointed at
loopback), as separate processes through the CLI. Workers are synthetic so the test is quick;
the real model path is covered by test_e2e.py.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.model_source import cache_root
from genfleet.embedded_redis import EmbeddedRedis, die_with_parent, free_port
from tests.deploy.compose_files import ROOT, as_argv, interpolate, load_compose, read_env_file
from tests.integration.fleet import wait_healthy

pytestmark = pytest.mark.timeout(240)

SYNTHETIC_RATE = 200.0


@dataclass
class Stack:
    redis: EmbeddedRedis
    base_url: str
    worker_metrics: list[str]
    procs: dict[str, subprocess.Popen[bytes]]
    log_dir: Path


def _service_argv_env(service: dict[str, Any], replacements: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    def fix(text: str) -> str:
        for old, new in replacements.items():
            text = text.replace(old, new)
        return text

    argv = [fix(a) for a in as_argv(service["command"])]
    env = {k: fix(str(v)) for k, v in service["environment"].items()}
    return argv, env


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(url, timeout=5).text
    return {s.name + (json.dumps(s.labels, sort_keys=True) if s.labels else ""): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def stack(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    password = secrets.token_hex(12)
    redis = EmbeddedRedis(appendonly=True, password=password).start()
    env_file = read_env_file(ROOT / "deploy" / ".env.example") | {
        "REDIS_PASSWORD": password, "SYNTHETIC_TOKENS_PER_S": str(SYNTHETIC_RATE)}
    base = interpolate(load_compose(ROOT / "docker-compose.yml"), env_file)["services"]
    cpu = interpolate(load_compose(ROOT / "docker-compose.cpu.yml"), env_file)["services"]
    log_dir = tmp_path_factory.mktemp("stack-logs")
    gateway_port = free_port()
    replacements = {
        "@redis:6379": f"@127.0.0.1:{redis.port}",
        "/models": str(cache_root(None)),  # where the test machine keeps the converted model
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(name: str, argv: list[str], env: dict[str, str]) -> None:
        log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GENFLEET_")} | env
        procs[name] = subprocess.Popen([sys.executable, "-m", "genfleet", *argv], cwd=ROOT, env=full_env,
                                       stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)

    worker_metrics = []
    for i in range(2):
        # Two replicas of one service: same command, their own metrics port on a shared host.
        port = free_port()
        argv, env = _service_argv_env(base["worker"], replacements | {"9100": str(port)})
        env |= cpu["worker"]["environment"]
        spawn(f"worker{i}", argv, env)
        worker_metrics.append(f"http://127.0.0.1:{port}/metrics")
    argv, env = _service_argv_env(base["gateway"], replacements | {
        "0.0.0.0": "127.0.0.1", "8080": str(gateway_port)})
    spawn("gateway", argv, env)
    stack = Stack(redis, f"http://127.0.0.1:{gateway_port}", worker_metrics, procs, log_dir)
    try:
        _wait_healthy(stack, 150.0)
        yield stack
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        redis.stop()


def _wait_healthy(stack: Stack, timeout: float) -> None:
    # /health turns 200 with the first live worker; the tests want both in the gateway's view.
    deadline = time.monotonic() + timeout
    try:
        wait_healthy(stack.base_url, list(stack.procs.values()), timeout)
        while _metrics(f"{stack.base_url}/metrics").get("genfleet_live_workers", 0) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway never saw both workers alive")
            time.sleep(0.5)
    except (RuntimeError, TimeoutError) as exc:
        logs = {n: (stack.log_dir / f"{n}.log").read_text()[-1500:] for n in stack.procs}
        raise RuntimeError(f"{exc}\n{logs}") from exc


def _generate(stack: Stack, prompt: str, n: int) -> httpx.Response:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": n, "details": True}}
    return httpx.post(f"{stack.base_url}/generate", json=body, timeout=60)


def test_generation_through_the_compose_wired_stack(stack: Stack) -> None:
    r = _generate(stack, "Hello there", 12)
    assert r.status_code == 200, r.text
    assert r.headers.get("x-request-id")
    details = r.json()["details"]
    assert details["generated_tokens"] == 12 and details["finish_reason"] == "length"
    with httpx.stream("POST", f"{stack.base_url}/generate_stream",
                      json={"inputs": "Hi", "parameters": {"max_new_tokens": 8}}, timeout=60) as s:
        events = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
    assert len(events) == 8 and events[-1]["generated_text"] is not None
    assert "".join(e["token"]["text"] for e in events) == events[-1]["generated_text"]


def test_every_process_serves_metrics_and_the_gateway_sees_the_fleet(stack: Stack) -> None:
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: _generate(stack, f"request {i}", 20), range(32)))
    assert all(r.status_code == 200 for r in responses)
    per_worker = []
    for url in stack.worker_metrics:
        m = _metrics(url)
        assert sum(v for k, v in m.items() if k.startswith("genfleet_worker_info")) == 1
        assert m["genfleet_worker_steps_total"] > 0 or m["genfleet_worker_generated_tokens_total"] == 0
        per_worker.append(m["genfleet_worker_generated_tokens_total"])
    # Both workers pulled from the one stream; together they made every token the clients got.
    assert sum(per_worker) == 12 + 8 + 32 * 20
    gateway = _metrics(f"{stack.base_url}/metrics")
    assert gateway["tgi_request_count"] >= 34 if "tgi_request_count" in gateway else gateway["tgi_request_count_total"] >= 34
    live = [v for k, v in gateway.items() if "worker" in k and ("live" in k or "alive" in k)]
    assert live and max(live) == 2, f"no live-worker gauge equal to 2 in {sorted(gateway)}"


def test_redis_requires_the_password(stack: Stack) -> None:
    import redis

    anonymous = redis.Redis(host="127.0.0.1", port=stack.redis.port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    authed = redis.Redis.from_url(stack.redis.url)
    assert authed.config_get("appendonly")["appendonly"] == "yes"
    authed.close()


def test_every_process_logs_json_lines_as_compose_asks(stack: Stack) -> None:
    for name in stack.procs:
        lines = (stack.log_dir / f"{name}.log").read_text().splitlines()
        assert lines, f"{name} logged nothing"
        for line in lines:
            record = json.loads(line)  # GENFLEET_JSON_OUTPUT=true in the compose environment
            assert record["role"] in ("gateway", "worker") and "request_id" in record


@pytest.mark.parametrize("api", ["tgi", "openai", "chat"])
def test_load_generator_reads_the_real_gateway(stack: Stack, api: str) -> None:
    import asyncio
    from urllib.parse import urlsplit

    from load.apis import get_api
    from load.run_load import run_closed_loop
    from load.sse_client import Target
    from load.workloads import synthetic_mix

    port = urlsplit(stack.base_url).port
    assert port is not None
    specs = synthetic_mix(8, seed=1, max_new_tokens=10)
    result = asyncio.run(run_closed_loop(get_api(api), Target("127.0.0.1", port), specs, concurrency=4,
                                         duration=60, timeout=60, label=api, meta={}))
    assert [r.error for r in result.records] == [None] * 8
    assert all(r.output_tokens == 10 for r in result.records)
    # Tokens stream at the synthetic rate, never one burst at the end: from the first token to the
    # last takes about (tokens - 1) / rate. (Gaps between single tokens are no measure: a loaded
    # machine relays several ticks' tokens in one burst, whose gaps are 0.)
    spans = sorted(r.e2e - (r.ttft or 0.0) for r in result.records)
    assert spans[len(spans) // 2] > 0.5 * 9 / SYNTHETIC_RATE, spans
