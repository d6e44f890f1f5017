"""The gateway image's HEALTHCHECK probe: it finds the gateway's process, reads the port that
process serves on from its own flags and environment, and turns /health's status into 0 or 1.

A /proc laid out in a temporary directory stands in for the container's, and a real HTTP server
on loopback for the gateway's /health.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from genfleet.healthcheck import gateway_address, main

pytestmark = pytest.mark.timeout(30)


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(self.status if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    _Health.status = 200


def _proc(root: Path, pid: int, argv: list[str], environ: dict[str, str]) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / str(pid) / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in environ.items()))


def test_the_port_comes_from_the_flag_then_the_environment_then_the_default() -> None:
    script = ["/opt/venv/bin/python", "/opt/venv/bin/genfleet"]
    assert gateway_address([*script, "gateway", "--port", "9001"], {"GENFLEET_PORT": "9002"}) == ("127.0.0.1", 9001)
    assert gateway_address([*script, "gateway"], {"GENFLEET_PORT": "9002"}) == ("127.0.0.1", 9002)
    assert gateway_address([*script, "gateway"], {}) == ("127.0.0.1", 8080)
    # A gateway bound to one address is probed there; `serve` runs a gateway too.
    assert gateway_address(["python", "-m", "genfleet", "serve", "--hostname", "127.0.0.2", "--port", "9003"],
                           {}) == ("127.0.0.2", 9003)


def test_probes_the_port_the_gateway_process_serves_on(tmp_path: Path, health_server: ThreadingHTTPServer) -> None:
    port = health_server.server_address[1]
    # PID 1 is an init here; the gateway is a later process, and the probe itself is one too.
    _proc(tmp_path, 1, ["/usr/bin/catatonit", "-P"], {})
    _proc(tmp_path, 7, ["/opt/venv/bin/python", "/opt/venv/bin/genfleet", "gateway", "--hostname", "0.0.0.0",
                        "--port", str(port)], {"GENFLEET_PORT": "1"})
    _proc(tmp_path, 9, ["python", "-m", "genfleet.healthcheck"], {})
    (tmp_path / "self").mkdir()
    assert main(proc=tmp_path) == 0
    _Health.status = 503  # Redis down, or no live worker: unhealthy
    assert main(proc=tmp_path) == 1


def test_unhealthy_when_nothing_listens_or_no_gateway_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(proc=tmp_path) == 1
    assert "no `genfleet gateway`" in capsys.readouterr().err
    _proc(tmp_path, 5, ["/opt/venv/bin/genfleet", "gateway", "--port", "not-a-port"], {})
    assert main(proc=tmp_path) == 1
    assert "cannot read the gateway's flags" in capsys.readouterr().err
