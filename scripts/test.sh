#!/usr/bin/env bash
# Fresh machine -> passing tests: Mosquitto and AppArmor's parser (Debian packages) if missing,
# .venv with the test and training extras, then the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages the tests run for real: the MQTT broker, and the AppArmor parser that checks
# the add-on's profile (apparmor.txt).
missing=""
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto"
command -v apparmor_parser >/dev/null || [ -x /usr/sbin/apparmor_parser ] || missing="$missing apparmor"
[ -x /usr/bin/chromium ] || missing="$missing chromium"  # the panel's browser tests (Playwright, no browser download)
if [ -n "$missing" ]; then
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -q && $sudo_cmd apt-get install -y -q $missing
fi
scripts/setup.sh test
. .venv/bin/activate  # the tests also run the installed `facelock` command
export PATH="$PATH:/usr/sbin"
exec python -m pytest -q "$@"
