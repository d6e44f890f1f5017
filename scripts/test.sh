#!/usr/bin/env bash
# One command to test: installs what serving needs plus the test, load and gpu extras, then the
# whole suite (GPU tests skip without one).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh test
exec "${GENFLEET_VENV:-.venv}/bin/python" -m pytest -p no:cacheprovider -q -ra --durations=15 "$@"
