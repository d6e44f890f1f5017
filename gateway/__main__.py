"""`python -m gateway [flags]`: the same as `genfleet gateway [flags]`."""

from __future__ import annotations

import sys

from genfleet.cli import parse_configs
from gateway.server import run


def main(argv: list[str] | None = None) -> int:
    _, config = parse_configs(["gateway", *(sys.argv[1:] if argv is None else argv)])
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
