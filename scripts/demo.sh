#!/usr/bin/env bash
# Runs the offline demo on the shipped model and the document shipped with qrag.
# Creates .venv if missing and installs only what the demo needs (qrag itself, torch pinned to the local
# CPU build). pip runs again only when pyproject.toml or constraints.txt changed: a stamp file in .venv
# records their hash. (scripts/setup.sh installs everything the tests need.)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.qrag-demo-installed
wanted="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] || ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('qrag_core') is None)"; then
  .venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0
  .venv/bin/python -m pip install -q -c constraints.txt -e .
  echo "$wanted" >"$stamp"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/qrag-demo "$@"
