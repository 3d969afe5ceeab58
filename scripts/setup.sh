#!/usr/bin/env bash
# Create .venv and install FaceLock into it. Usage: scripts/setup.sh [runtime|test]
# The install is editable, so code changes need no reinstall: it runs only when .venv is missing
# or pyproject.toml (dependencies, entry points, package data) or this script changed since the
# last one, as the stamp file records; otherwise this returns at once (a reinstall at every
# start took 16-25 s).
set -euo pipefail
cd "$(dirname "$0")/.."
want="${1:-runtime}"
wanted="$(cat pyproject.toml addon/constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)"  # what and how
installed() { [ -x .venv/bin/python ] && [ "$(cat ".venv/.installed-$1" 2>/dev/null)" = "$wanted" ]; }
if installed "$want" || { [ "$want" = runtime ] && installed test; }; then  # test includes runtime
    exit 0
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# The runtime dependencies at the add-on image's exact versions (addon/constraints.txt), so the
# tests check what the image ships.
pins=(--constraint addon/constraints.txt)
if [ "$want" = test ]; then
    # torch 2.13.0 is the CPU build these machines keep on disk; another spec may pull a CUDA build.
    python -m pip install --quiet "${pins[@]}" -e ".[test]" "torch==2.13.0" "matplotlib>=3.8" "onnxscript>=0.5"
else
    python -m pip install --quiet "${pins[@]}" -e .
fi
echo "$wanted" > ".venv/.installed-$want"
