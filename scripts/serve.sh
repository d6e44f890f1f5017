#!/usr/bin/env bash
# One command to serve: installs what serving needs (no test or benchmark tools), then
# `genfleet serve` with the given flags.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh serve
exec "${GENFLEET_VENV:-.venv}/bin/genfleet" serve "$@"
