#!/usr/bin/env bash
# Set up guidelab from nothing: a virtual environment with the CPU build of torch 2.13.0 (pip finds it
# locally; an unpinned torch would pull gigabytes of CUDA packages) and the package with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# pip's own exit status is kept; only its noise about unused local index folders is dropped.
pip_install() { .venv/bin/python -m pip install --quiet "$@" 2> >(grep -v "is ignored" >&2); }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
echo "setting up .venv: pip, torch 2.13.0 (CPU), then guidelab with its dev extras (about a minute)"
pip_install --upgrade pip
pip_install "torch==2.13.0"
echo "torch installed; installing guidelab and its dev extras"
pip_install -e ".[dev]"
.venv/bin/python -c "import torch, guidelab; print(f'guidelab {guidelab.__version__} with torch {torch.__version__}')"
