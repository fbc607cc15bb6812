#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with the project and its
# test tools, at the versions in constraints.txt (torch 2.13.0; a CPU wheel
# on disk is preferred where pip is configured to find one).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Python 3.11 or newer is needed (pandas 3, numpy 2.4 and matplotlib 3.11 require it);" \
    "$PYTHON is $("$PYTHON" -V 2>&1). Run: PYTHON=python3.11 bash scripts/setup.sh" >&2
  exit 1
fi
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
.venv/bin/python - <<'PY'
import torch, kedro
print(f"ready: kedro {kedro.__version__}, torch {torch.__version__}")
PY
echo "activate with: source .venv/bin/activate"
