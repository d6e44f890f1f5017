"""A real gateway on a loopback port and a scripted worker speaking the real Redis protocol.

The scripted worker reads the model's stream with XREADGROUP, heartbeats a WorkerInfo and
publishes real EventBatch messages, so the gateway under test sees exactly what a worker sends.
What it generates is fixed by the prompt text, which lets a test pick its worker behaviour:
  "ERROR"  -> an Error event after the Accepted
  "SLOW"   -> 0.3 s between tokens
  "HANG"   -> accepts and then never answers
  "STOP"   -> the finish reason is stop_sequence after 2 tokens
  "GONE"   -> attempt 0 gets Error(gateway_gone), as from a worker that took the gateway for dead
otherwise it emits `max_new_tokens` tokens (ids 1000+seq, text " w<seq>"), finish "length".
It announces `adapters` as its LoRA adapters and answers LoadAdapter (of a path that is a
directory) and UnloadAdapter (of an adapter it holds) as a worker does; it refuses the others.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import redis
import uvicorn

from common.config import FleetConfig, GatewayConfig
from common.errors import GATEWAY_GONE
from common.protocol import (
    Accepted, Cancel, Error, EventBatch, Finish, GenerateRequest, LoadAdapter, Token, TopToken, UnloadAdapter,
    WorkerInfo, decode_control, decode_request, encode,
)
from common.streams import CONSUMER_GROUP, REQUEST_FIELD, Keys
from gateway.app import build_app
from gateway.server import uvicorn_config
from genfleet.embedded_redis import free_port

__all__ = ["ScriptedWorker", "GatewayServer", "gateway_config", "serve_gateway", "open_raw", "post_head",
           "read_response"]


@dataclass
class ScriptedWorker:
    redis_url: str
    prefix: str
    model: str
    worker_id: str = "wk-scripted"
    capacity_tokens: int = 4096
    max_total_tokens: int = 4096  # what its heartbeat says it serves (the gateway validates against it)
    metrics_port: int = 0  # its own /metrics listener, as its heartbeat names it
    adapters: list[str] = field(default_factory=list)  # the LoRA adapters its heartbeat announces
    received: list[GenerateRequest] = field(default_factory=list)
    cancels: list[Cancel] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = Keys(self.prefix)
        self.r = redis.Redis.from_url(self.redis_url)

    def start(self) -> ScriptedWorker:
        stream = self.keys.request_stream(self.model)
        try:
            self.r.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.heartbeat()
        for target in (self._serve, self._listen_cancels, self._heartbeats):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self.r.delete(self.keys.worker_heartbeat(self.worker_id))
        self.r.close()

    def heartbeat(self, draining: bool = False) -> None:
        now = time.time()
        info = WorkerInfo(self.worker_id, self.model, 0, 0, self.capacity_tokens, self.capacity_tokens,
                          self.max_total_tokens, 8, now, now, draining, metrics_port=self.metrics_port,
                          adapters=list(self.adapters))
        self.r.set(self.keys.worker_heartbeat(self.worker_id), encode(info), ex=3)
        self.r.zadd(self.keys.worker_registry(self.model), {self.worker_id: now})
        self.r.zadd(self.keys.model_registry(), {self.model: now})

    def _heartbeats(self) -> None:
        while not self._stop.wait(0.2):
            self.heartbeat()

    def _listen_cancels(self) -> None:
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.keys.worker_channel(self.worker_id), self.keys.control_channel(self.model))
        while not self._stop.is_set():
            msg = pubsub.get_message(timeout=0.1)
            if msg is None:
                continue
            control = decode_control(msg["data"])
            if isinstance(control, (LoadAdapter, UnloadAdapter)):
                self._adapter_control(control)
            else:
                self.cancels.append(control)
        pubsub.close()

    def _adapter_control(self, msg: LoadAdapter | UnloadAdapter) -> None:
        if isinstance(msg, LoadAdapter):
            done = Path(msg.path).is_dir() and msg.adapter_id not in self.adapters
            if done:
                self.adapters.append(msg.adapter_id)
        else:
            done = msg.adapter_id in self.adapters
            if done:
                self.adapters.remove(msg.adapter_id)
        self.heartbeat()  # as a worker: announced before it answers
        answer = Accepted(msg.reply_id, 0, self.worker_id) if done else Error(
            msg.reply_id, 0, "adapter", f"worker {self.worker_id}: cannot {type(msg).__name__} {msg.adapter_id}")
        self.r.publish(self.keys.gateway_channel(msg.gateway_id), encode(EventBatch(self.worker_id, 0, [answer])))

    def _serve(self) -> None:
        stream = self.keys.request_stream(self.model)
        while not self._stop.is_set():
            got = self.r.xreadgroup(CONSUMER_GROUP, self.worker_id, {stream: ">"}, count=16, block=100)
            for _, entries in got or []:
                for entry_id, fields in entries:
                    req = decode_request(fields[REQUEST_FIELD])
                    self.r.xack(stream, CONSUMER_GROUP, entry_id)
                    self.r.xdel(stream, entry_id)
                    self.received.append(req)
                    threading.Thread(target=self._answer, args=(req,), daemon=True).start()

    def _publish(self, req: GenerateRequest, *events: object) -> None:
        batch = EventBatch(self.worker_id, 0, list(events))  # type: ignore[arg-type]
        self.r.publish(self.keys.gateway_channel(req.gateway_id), encode(batch))

    def _cancelled(self, req: GenerateRequest) -> bool:
        return any(c.req_id == req.req_id and c.attempt in (req.attempt, -1) for c in self.cancels)

    def _answer(self, req: GenerateRequest) -> None:
        self._publish(req, Accepted(req.req_id, req.attempt, self.worker_id))
        prompt = _prompt_marker(req)
        if "ERROR" in prompt:
            self._publish(req, Error(req.req_id, req.attempt, "generation", "Request failed during generation: boom"))
            return
        if "HANG" in prompt:
            return
        if "GONE" in prompt and req.attempt == 0:
            self._publish(req, Error(req.req_id, req.attempt, GATEWAY_GONE, "Cancelled: the gateway's heartbeat expired"))
            return
        n = 2 if "STOP" in prompt else req.params.max_new_tokens
        delay = 0.3 if "SLOW" in prompt else 0.0
        first = len(req.generated_ids)
        top_n = req.params.top_n_tokens
        for seq in range(first, first + n):
            if self._stop.is_set() or self._cancelled(req):
                return
            if delay:
                time.sleep(delay)
            top = [TopToken(2000 + k, f" alt{k}", -1.0 - k, False) for k in range(top_n)]
            self._publish(req, Token(req.req_id, req.attempt, seq, 1000 + seq, f" w{seq}", -0.5, False, top))
        reason = "stop_sequence" if "STOP" in prompt else "length"
        prefill = [TopToken(i, f"p{i}", -0.25, False) for i in req.input_ids] if req.params.prefill_logprobs else []
        self._publish(req, Finish(req.req_id, req.attempt, first + n, reason, len(req.input_ids),
                                  req.params.seed, 0.001, 0.002, prefill))


_MARKER_TEXTS: dict[tuple[int, ...], str] = {}


def _prompt_marker(req: GenerateRequest) -> str:
    # The worker sees token ids only; the tests register which prompt ids carry which marker.
    for ids, marker in _MARKER_TEXTS.items():
        if tuple(req.input_ids[: len(ids)]) == ids or _contains(req.input_ids, ids):
            return marker
    return ""


def _contains(haystack: list[int], needle: tuple[int, ...]) -> bool:
    n = len(needle)
    return any(tuple(haystack[i : i + n]) == needle for i in range(len(haystack) - n + 1))


def register_markers(tokenizer: object) -> None:
    for word in ("ERROR", "SLOW", "HANG", "STOP", "GONE"):
        ids = tuple(tokenizer.encode(f" {word}", add_special_tokens=False))  # type: ignore[attr-defined]
        _MARKER_TEXTS[ids] = word


def gateway_config(redis_url: str, prefix: str, **overrides: object) -> GatewayConfig:
    fleet = FleetConfig(redis_url=redis_url, key_prefix=prefix, max_input_tokens=200, max_total_tokens=512,
                        heartbeat_interval=0.2, heartbeat_ttl=2.0)
    fleet_fields = {k: overrides.pop(k) for k in list(overrides) if hasattr(fleet, k)}
    fleet = replace(fleet, **fleet_fields)  # type: ignore[arg-type]
    return GatewayConfig(fleet=fleet, hostname="127.0.0.1", port=free_port(), gateway_id=f"gw-{prefix}",
                         **overrides)  # type: ignore[arg-type]


@dataclass
class GatewayServer:
    config: GatewayConfig
    server: uvicorn.Server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    @property
    def ctx(self):  # type: ignore[no-untyped-def]
        return self.server.config.app.state.ctx


@contextmanager
def serve_gateway(config: GatewayConfig) -> Iterator[GatewayServer]:
    app = build_app(config)
    uv_config = uvicorn_config(app, config)  # served as in production: the same protocol and bounds
    uv_config.timeout_graceful_shutdown = 2
    server = uvicorn.Server(uv_config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.02)
    try:
        yield GatewayServer(config, server)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- raw HTTP/1.1 on a socket, for what a well-behaved client never does -------------------------
def open_raw(gw: GatewayServer, head: bytes, body: bytes = b"") -> socket.socket:
    """A connection that has sent `head` (request line and headers, without the blank line) and
    the first `body` bytes, and then sends nothing more."""
    sock = socket.create_connection(("127.0.0.1", gw.config.port), timeout=10)
    sock.sendall(head + b"\r\n\r\n" + body)
    return sock


def post_head(path: str, length: int | None, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json", *extra]
    lines.append(f"content-length: {length}" if length is not None else "transfer-encoding: chunked")
    return "\r\n".join(lines).encode()


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one response on `sock` (bounded by `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    length = int(headers.get("content-length", "-1"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body
