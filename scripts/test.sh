#!/usr/bin/env bash
# Fresh machine -> passing tests: Mosquitto (Debian package) if missing, .venv with the test and
# training extras, then the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -q && $sudo_cmd apt-get install -y -q mosquitto
fi
scripts/setup.sh test
export PATH="$PATH:/usr/sbin"
exec .venv/bin/python -m pytest -q "$@"
