#!/usr/bin/env bash
# Fresh machine -> running service: set up .venv, then `facelock run` (an embedded MQTT broker
# on localhost when no broker is configured). Extra arguments go to `facelock run`'s parent, e.g.
#   scripts/run.sh --data-dir ./data
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh runtime
# Liveness models: downloaded and converted once (no PyTorch needed). Without them (no internet
# here) the service starts without liveness; say so plainly and how to install it by hand.
if ! .venv/bin/facelock "$@" liveness download --if-missing; then
    echo "run.sh: LIVENESS IS NOT INSTALLED: the weights could not be downloaded (see the error above)." >&2
    echo "run.sh: copy the two MiniFASNet .pth files (docs/LIVENESS.md) to DIR on this machine, then run:" >&2
    echo "run.sh:     .venv/bin/facelock $* liveness install --weights DIR" >&2
fi
exec .venv/bin/facelock "$@" run
