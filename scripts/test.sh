#!/usr/bin/env bash
# Fresh machine -> passing tests: Mosquitto (Debian package) if missing, .venv with the test and
# training extras, then the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -q && $sudo_cmd apt-get install -y -q mosquitto
fi
if [ ! -x /usr/bin/chromium ]; then  # the panel's browser tests (Playwright, no browser download)
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -q && $sudo_cmd apt-get install -y -q chromium
fi
scripts/setup.sh test
. .venv/bin/activate  # the tests also run the installed `facelock` command
export PATH="$PATH:/usr/sbin"
exec python -m pytest -q "$@"
