#!/usr/bin/env bash
# Fresh machine -> running service: set up .venv, then `facelock run` (an embedded MQTT broker
# on localhost when no broker is configured). Extra arguments go to `facelock run`'s parent, e.g.
#   scripts/run.sh --data-dir ./data
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh runtime
exec .venv/bin/facelock "$@" run
