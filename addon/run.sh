#!/usr/bin/env bash
# Start FaceLock inside the Home Assistant add-on container (the image's CMD).
# The add-on's options arrive as /data/options.json (FACELOCK_OPTIONS_FILE); the MQTT broker and
# its credentials come from the Supervisor's services API, which `facelock run` asks itself with
# $SUPERVISOR_TOKEN. A wrong option stops the service here, naming the option and the reason.
set -euo pipefail

options="${FACELOCK_OPTIONS_FILE:-/data/options.json}"
if [[ ! -f "$options" ]]; then
    echo "facelock-addon: no options file at $options; starting with the defaults" >&2
fi
if [[ -z "${SUPERVISOR_TOKEN:-}" ]]; then
    echo "facelock-addon: no SUPERVISOR_TOKEN: not running under the Supervisor" >&2
fi

exec facelock run "$@"
