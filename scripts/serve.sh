#!/usr/bin/env bash
# One command to serve: installs what is missing, then `genfleet serve` with the given flags.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec "${GENFLEET_VENV:-.venv}/bin/genfleet" serve "$@"
