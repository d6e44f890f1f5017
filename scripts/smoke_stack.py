"""Smoke test of a running stack through its gateway: the checks scripts/images.sh runs.

    python3 scripts/smoke_stack.py --url http://127.0.0.1:8080 --workers 2

/health turns 200; the gateway's /metrics shows the expected number of live workers, each by
its worker id; one /generate and one streamed chat completion answer the default model's
question correctly. Standard library
only, so it runs with any python3 on the host. Every wait has a deadline; exit status 1 on the
first check that fails.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request

# The default model answers both greedily with Paris (DESIGN.md); another model may not.
PROMPT = "The capital of France is"
QUESTION = "What is the capital of France?"
EXPECTED = "Paris"
MAX_NEW_TOKENS = 12
_WORKER_ID = re.compile(r'^genfleet_fleet_worker_free_kv_tokens\{[^}]*worker_id="([^"]+)"', re.M)
_LIVE = re.compile(r"^genfleet_live_workers(?:\{[^}]*\})? ([0-9.e+]+)$", re.M)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the gateway, e.g. http://127.0.0.1:8080")
    parser.add_argument("--workers", type=int, default=2, help="live workers expected")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the stack to come up")
    args = parser.parse_args()
    try:
        _wait_healthy(args.url, time.monotonic() + args.timeout)
        workers = _wait_workers(args.url, args.workers, time.monotonic() + args.timeout)
        _say(f"/metrics: {len(workers)} live workers: {', '.join(workers)}")
        _generate(args.url)
        _stream(args.url)
    except SmokeError as exc:
        _say(f"FAILED: {exc}")
        return 1
    return 0


class SmokeError(Exception):
    pass


def _say(text: str) -> None:
    print(f"[smoke] {text}", flush=True)


def _request(url: str, body: dict[str, object] | None = None, timeout: float = 120) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:  # noqa: S310 - the user's gateway
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_healthy(url: str, deadline: float) -> None:
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, _ = _request(f"{url}/health", timeout=5)
            if status == 200:
                _say("/health 200")
                return
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(1)
    raise SmokeError(f"/health never answered 200 ({last})")


def _wait_workers(url: str, expected: int, deadline: float) -> list[str]:
    workers: list[str] = []
    while time.monotonic() < deadline:
        status, body = _request(f"{url}/metrics", timeout=5)
        text = body.decode()
        live = _LIVE.search(text)
        workers = sorted(set(_WORKER_ID.findall(text)))
        if status == 200 and live and float(live.group(1)) >= expected and len(workers) >= expected:
            return workers
        time.sleep(1)
    raise SmokeError(f"the gateway's /metrics never showed {expected} live workers (saw {workers})")


def _generate(url: str) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW_TOKENS, "details": True}}
    started = time.monotonic()
    status, raw = _request(f"{url}/generate", body)
    if status != 200:
        raise SmokeError(f"/generate answered {status}: {raw[:300]!r}")
    answer = json.loads(raw)
    text, tokens = answer["generated_text"], answer["details"]["generated_tokens"]
    if EXPECTED not in text or not 0 < tokens <= MAX_NEW_TOKENS:
        raise SmokeError(f"/generate did not answer {EXPECTED!r}: {answer}")
    _say(f"/generate {tokens} tokens in {time.monotonic() - started:.1f} s: {PROMPT!r} -> {text!r}")


def _stream(url: str) -> None:
    # The chat route, streamed: the chat template is applied by the container's gateway.
    body = {"model": "tgi", "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": MAX_NEW_TOKENS, "temperature": 0, "stream": True}  # 0: greedy, as TGI
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
    pieces: list[str] = []
    done = False
    with urllib.request.urlopen(req, timeout=120) as response:  # noqa: S310 - the user's gateway
        if "text/event-stream" not in response.headers.get("Content-Type", ""):
            raise SmokeError(f"the chat stream is not an event stream: {response.headers}")
        for line in response:
            if not line.startswith(b"data:"):
                continue
            if line[5:].strip() == b"[DONE]":
                done = True
                break
            for choice in json.loads(line[5:])["choices"]:
                pieces.append(choice["delta"].get("content") or "")
    answer = "".join(pieces)
    if not done or EXPECTED not in answer:
        raise SmokeError(f"chat stream: {len(pieces)} events, [DONE] {'seen' if done else 'missing'}, {answer!r}")
    _say(f"/v1/chat/completions streamed {len(pieces)} events: {QUESTION!r} -> {answer!r}")


if __name__ == "__main__":
    sys.exit(main())
