#!/usr/bin/env bash
# Create .venv and install FaceLock into it. Usage: scripts/setup.sh [runtime|test]
set -euo pipefail
cd "$(dirname "$0")/.."
want="${1:-runtime}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if [ "$want" = test ]; then
    # torch 2.13.0 is the CPU build these machines keep on disk; another spec may pull a CUDA build.
    python -m pip install --quiet -e ".[test]" "torch==2.13.0" "matplotlib>=3.8"
else
    python -m pip install --quiet -e .
fi
