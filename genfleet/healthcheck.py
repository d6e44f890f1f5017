"""The gateway image's HEALTHCHECK: GET /health (or the path given) on the address the running
gateway serves.

The probe runs beside the gateway in its container, so it finds the gateway's own process
(`genfleet gateway ...` or `genfleet serve ...`) under /proc and parses that process's argv and
environment with the CLI's own parser: `--port 9000`, `GENFLEET_PORT=9000` and the default all
land on the port the gateway really bound. Exit 0 when /health answers 200, 1 otherwise (Docker's
and podman's healthcheck contract).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

from common.config import ConfigError
from genfleet.cli import parse_configs

__all__ = ["gateway_address", "main"]

_ROLES = ("gateway", "serve")
_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")


def gateway_address(argv: list[str], environ: dict[str, str]) -> tuple[str, int]:
    """The (host, port) to probe for a gateway started as `... genfleet <role> <flags>`."""
    start = next(i for i, arg in enumerate(argv) if arg in _ROLES)
    role, config = parse_configs(argv[start:], environ)
    gateway = config.gateway if role == "serve" else config
    host = "127.0.0.1" if gateway.hostname in _ANY_ADDRESS else gateway.hostname
    return host, gateway.port


def main(path: str = "/health", proc: Path = Path("/proc")) -> int:
    found = _gateway_process(proc)
    if found is None:
        print("healthcheck: no `genfleet gateway` or `genfleet serve` process found", file=sys.stderr)
        return 1
    try:
        host, port = gateway_address(*found)
    except (ConfigError, SystemExit) as exc:
        print(f"healthcheck: cannot read the gateway's flags: {exc}", file=sys.stderr)
        return 1
    url = f"http://{_bracketed(host)}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own gateway
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


def _gateway_process(proc: Path) -> tuple[list[str], dict[str, str]] | None:
    # The lowest pid first: the gateway itself (PID 1 without an init), not a child of `serve`.
    pids = sorted((int(p.name) for p in proc.iterdir() if p.name.isdigit()))
    for pid in pids:
        try:
            argv = (proc / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            if not any(Path(a).name == "genfleet" or a == "genfleet" for a in argv[:3]):
                continue
            if not any(a in _ROLES for a in argv):
                continue
            raw = (proc / str(pid) / "environ").read_bytes().decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        environ = dict(item.partition("=")[::2] for item in raw.split("\0") if "=" in item)
        return argv, environ
    return None


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
