#!/usr/bin/env bash
# The add-on image without Docker: build its root filesystem the way ./Dockerfile does, start it
# the way the Supervisor does, and report what it installs. docs/IMAGE.md explains the steps.
#
#   scripts/image-check.sh        as root on a Debian/Ubuntu host (debootstrap, chroot, mount)
#
# 1. FROM: a debootstrap of Debian bookworm (minbase) from the mirror apt already uses, with
#    Debian's python3 (3.11) and pip, cached as a tarball.
# 2. Every other Dockerfile instruction as written: ARG defaults, ENV, WORKDIR, COPY (the files
#    git would put in a clean clone), RUN under /bin/sh -c in the chroot; the CMD is recorded.
# 3. The installed size: the whole rootfs, what the Dockerfile's steps added, site-packages.
# 4. The start path: a password-protected Mosquitto on the host, the stand-in Supervisor
#    (tests/addon/supervisor_standin.py, run by the image's own Python), /data/options.json from
#    config.yaml's defaults plus one camera, the CMD in the chroot with SUPERVISOR_TOKEN; with the
#    shared face data, an enrolled person's clip unlocks; SIGTERM must publish LOCKED and
#    offline and exit 0.
#
# Exit 0 passed, 1 failed, 77 cannot run on this machine (the reason is printed).
# Environment: FACELOCK_IMAGE_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/facelock-image:
# the base rootfs tarball, .debs, pip's wheels), FACELOCK_IMAGE_MIRROR (default: apt's Debian
# mirror), FACELOCK_IMAGE_KEEP=1 (keep the work folder and print it), FACELOCK_SHARED (as the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SUITE=bookworm
INCLUDE=python3,python3-pip,ca-certificates,netbase,tzdata
CACHE=${FACELOCK_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/facelock-image}
SHARED=${FACELOCK_SHARED:-$REPO/../shared}
T0=$(date +%s.%N)

say() { printf '[image-check %6.1fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*"; }
skip() { echo "image-check: SKIPPED: $*"; exit 77; }
fail() { echo "image-check: FAILED: $*" >&2; exit 1; }
STEPS=()
step_done() { STEPS+=("$(printf '%-44s %6.1f s' "$1" "$(echo "$(date +%s.%N) - $2" | bc)")"); }

# --- can it run here? ----------------------------------------------------------------------------
[ "$(uname -s)" = Linux ] || skip "needs Linux (debootstrap and chroot)"
[ "$(id -u)" -eq 0 ] || skip "needs root for debootstrap, chroot and mount (run it with sudo)"
command -v bc >/dev/null || skip "needs bc"
apt_install() {  # packages from the host's own apt sources, when it has apt
    command -v apt-get >/dev/null || return 1
    { apt-get install -y -q "$@" || { apt-get update -q && apt-get install -y -q "$@"; }; } >/dev/null 2>&1
}
command -v debootstrap >/dev/null || apt_install debootstrap \
    || skip "debootstrap is not installed and apt-get could not install it"
for tool in mosquitto_passwd mosquitto_sub; do
    command -v "$tool" >/dev/null || apt_install mosquitto mosquitto-clients \
        || skip "$tool is missing (apt-get install mosquitto mosquitto-clients)"
done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$MOSQUITTO" ] || apt_install mosquitto || skip "mosquitto is missing (apt-get install mosquitto)"
PY=""
for candidate in "$REPO/.venv/bin/python" python3; do
    if "$candidate" -c 'import yaml' 2>/dev/null; then PY=$candidate; break; fi
done
[ -n "$PY" ] || skip "needs a host Python with PyYAML to read config.yaml (scripts/setup.sh test makes .venv)"
case "$(dpkg --print-architecture 2>/dev/null || uname -m)" in
    amd64 | x86_64) ARCH=amd64 ;;
    arm64 | aarch64) ARCH=arm64 ;;
    *) skip "the add-on is built for amd64 and aarch64 only, not $(uname -m)" ;;
esac
MIRROR=${FACELOCK_IMAGE_MIRROR:-$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
    | awk -v s="$SUITE" '$2 == s && $1 !~ /security/ {print $1; exit}')}
MIRROR=${MIRROR:-http://deb.debian.org/debian/}

WORK=$(mktemp -d /tmp/facelock-image.XXXXXX)
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS" "$CACHE/debs" "$CACHE/pip"
PIDS=()
MOUNTS=()
mount_in() {  # mount_in TARGET MOUNT-ARGS...: a mount under the rootfs, undone by unmount_all
    [ -e "$ROOTFS$1" ] || mkdir -p "$ROOTFS$1"
    mount "${@:2}" "$ROOTFS$1"
    MOUNTS+=("$ROOTFS$1")
}
unmount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null || true
    done
    MOUNTS=()
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    unmount_all
    if grep -q " $WORK" /proc/mounts; then
        echo "image-check: $WORK still has mounts; left in place" >&2
    elif [ "${FACELOCK_IMAGE_KEEP:-0}" = 1 ]; then
        echo "image-check: kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mount -t tmpfs none "$ROOTFS" 2>/dev/null && umount "$ROOTFS" \
    || skip "cannot mount here (a container without CAP_SYS_ADMIN?)"

# --- 1. FROM: Debian bookworm with Python 3.11 ---------------------------------------------------
t=$(date +%s.%N)
KEY=$(echo "$SUITE $ARCH $MIRROR $INCLUDE v1" | sha256sum | cut -c1-12)
BASE_TAR=$CACHE/rootfs-$SUITE-$ARCH-$KEY.tar
if [ -f "$BASE_TAR" ]; then
    say "FROM: base rootfs from the cache ($BASE_TAR)"
    tar -C "$ROOTFS" --numeric-owner -xpf "$BASE_TAR"
else
    say "FROM: debootstrap --variant=minbase $SUITE ($ARCH) from $MIRROR with $INCLUDE"
    debootstrap --variant=minbase --arch="$ARCH" --include="$INCLUDE" --cache-dir="$CACHE/debs" \
        "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap failed"; }
    # As the official python image: no apt lists, no PEP 668 marker (pip installs to /usr/local).
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
    tar -C "$ROOTFS" --numeric-owner -cpf "$BASE_TAR.tmp" . && mv "$BASE_TAR.tmp" "$BASE_TAR"
fi
chroot "$ROOTFS" /bin/true || skip "chroot does not work here"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"  # as Docker provides it to RUN steps
BASE_KB=$(du -sxk "$ROOTFS" | cut -f1)
say "base: $(chroot "$ROOTFS" python3 --version), $(chroot "$ROOTFS" pip --version | cut -d' ' -f1-2), $((BASE_KB / 1024)) MiB"
step_done "1. FROM (base rootfs)" "$t"

# --- 2. the Dockerfile's instructions ------------------------------------------------------------
t=$(date +%s.%N)
# The liveness weights come from their published address at build time; this machine cannot reach
# it, so the same pinned files (SHA-256 checked by the build step) are served from the shared
# models on loopback, as a --build-arg mirror would be.
WEIGHTS=$SHARED/models/minifasnet
if [ -d "$WEIGHTS" ]; then
    WEIGHTS_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$PY" -m http.server --bind 127.0.0.1 --directory "$WEIGHTS" "$WEIGHTS_PORT" >"$WORK/weights.log" 2>&1 &
    PIDS+=($!)
    export FACELOCK_IMAGE_ARG_LIVENESS_WEIGHTS_URL="http://127.0.0.1:$WEIGHTS_PORT/"
    say "liveness weights: served from $WEIGHTS on 127.0.0.1:$WEIGHTS_PORT (the build's mirror)"
elif [ -n "${CI:-}" ]; then
    fail "shared liveness weights not found at $WEIGHTS (see ../shared/models/README.md)"
fi
mount_in /proc -t proc proc
mount_in /dev --bind /dev
mount_in /sys --bind -o ro /sys
mount_in /var/cache/facelock-pip --bind "$CACHE/pip"
# The host's CA bundle (PIP_CERT, else the system one) for RUN steps only: a TLS-intercepting
# proxy's CA reaches pip, and nothing of it stays in the image.
HOST_CA=${FACELOCK_IMAGE_CA:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
export CHECK_PIP_CERT=""
if [ -f "$HOST_CA" ] && [ -f "$ROOTFS/etc/ssl/certs/ca-certificates.crt" ]; then
    mount_in /etc/ssl/certs/ca-certificates.crt --bind "$HOST_CA"
    CHECK_PIP_CERT=/etc/ssl/certs/ca-certificates.crt
fi
# Stdlib only: read the Dockerfile (continuations joined, comments dropped), carry it out.
"$PY" - "$REPO" "$ROOTFS" "$WORK" <<'PYEOF' || fail "a Dockerfile step failed"
import json, os, shlex, shutil, subprocess, sys
from pathlib import Path, PurePosixPath

repo, rootfs, work = map(Path, sys.argv[1:4])
lines = [l for l in (repo / "Dockerfile").read_text().splitlines() if not l.lstrip().startswith("#")]
steps = [l.split(maxsplit=1) for l in "\n".join(lines).replace("\\\n", " ").splitlines() if l.strip()]
env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
build_args, workdir, command = {}, PurePosixPath("/"), None


def clean_files(source: Path) -> list[Path]:
    """What a fresh clone (plus uncommitted work) has under `source`: no caches, no ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", str(source.relative_to(repo))],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    return [repo / p for p in listed if p and (repo / p).is_file()]


for number, (instruction, args) in enumerate(steps, 1):
    instruction = instruction.upper()
    print(f"  step {number}: {instruction} {args}", flush=True)
    if instruction == "FROM":
        assert "bookworm" in args, f"the base image {args} is not Debian bookworm: update scripts/image-check.sh"
    elif instruction == "ARG":  # FACELOCK_IMAGE_ARG_<NAME> plays `docker build --build-arg NAME=...`
        name, _, default = args.partition("=")
        build_args[name] = os.environ.get(f"FACELOCK_IMAGE_ARG_{name}", default)
    elif instruction == "LABEL":
        pass
    elif instruction == "ENV":
        assert "$" not in args, "ENV with variable references: teach scripts/image-check.sh to expand them"
        env.update(word.split("=", 1) for word in shlex.split(args))
    elif instruction == "WORKDIR":
        workdir = workdir / args
        (rootfs / workdir.relative_to("/")).mkdir(parents=True, exist_ok=True)
    elif instruction == "COPY":
        assert not args.startswith("--"), f"COPY {args}: options are not mirrored"
        *sources, dest = shlex.split(args)
        target = workdir / dest
        into = dest.endswith("/") or len(sources) > 1
        for source in sources:
            src = repo / source
            base = target / src.name if into and src.is_file() else target
            files = clean_files(src) if src.is_dir() else [src]
            assert files, f"COPY {source}: nothing to copy"
            for f in files:
                out = rootfs / base.relative_to("/") / (f.relative_to(src) if src.is_dir() else "")
                out = out if src.is_dir() else rootfs / base.relative_to("/")
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)  # keeps the mode: the start script stays executable
    elif instruction == "RUN":
        run_env = {**build_args, **env}
        if run_env.pop("PIP_NO_CACHE_DIR", None):  # the image keeps no cache; the check keeps one outside it
            run_env["PIP_CACHE_DIR"] = "/var/cache/facelock-pip"
        if os.environ.get("CHECK_PIP_CERT"):  # pip from PyPI trusts certifi's CAs, not the system's
            run_env["PIP_CERT"] = os.environ["CHECK_PIP_CERT"]
        shell = f"cd {shlex.quote(str(workdir))} && {args}"
        argv = ["chroot", str(rootfs), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in run_env.items()), "/bin/sh", "-c", shell]
        subprocess.run(argv, check=True)
    elif instruction == "CMD":
        command = json.loads(args)
    else:
        raise SystemExit(f"{instruction}: not mirrored by scripts/image-check.sh")

assert command, "the Dockerfile has no CMD"
(work / "image.json").write_text(json.dumps({"env": env, "workdir": str(workdir), "cmd": command}))
PYEOF
unmount_all
step_done "2. Dockerfile steps (COPY, RUN pip install)" "$t"

# --- 3. installed size ---------------------------------------------------------------------------
SITE=$(chroot "$ROOTFS" python3 -c 'import importlib.util as u; print(u.find_spec("facelock_mqtt").submodule_search_locations[0].rsplit("/", 1)[0])')
TOTAL_KB=$(du -sxk "$ROOTFS" | cut -f1)
SITE_KB=$(du -sxk "$ROOTFS$SITE" | cut -f1)
say "installed size: rootfs $((TOTAL_KB / 1024)) MiB (base $((BASE_KB / 1024)) MiB + Dockerfile steps $(((TOTAL_KB - BASE_KB) / 1024)) MiB); $SITE $((SITE_KB / 1024)) MiB"
echo "  largest in $SITE (MiB):"
(cd "$ROOTFS$SITE" && du -sxm -- */ 2>/dev/null | sort -rn | head -8 | sed 's/^/    /')
# Every distribution the steps installed under /usr/local is at its pinned version. (Debian's
# python3-pip keeps its own pip, setuptools and wheel in /usr/lib/python3/dist-packages.)
chroot "$ROOTFS" python3 -c '
import importlib.metadata as m, sys
for d in m.distributions(path=[sys.argv[1]]):
    print(d.metadata["Name"], d.version)' "$SITE" >"$WORK/installed.txt"
"$PY" - "$REPO/addon/constraints.txt" "$WORK/installed.txt" <<'PYEOF' || fail "the image does not install addon/constraints.txt's versions"
import re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
pins = {norm(n): v for n, v in (l.split("==") for l in open(sys.argv[1]).read().split() if "==" in l)}
installed = dict((norm(n), v) for n, v in (l.split() for l in open(sys.argv[2]) if l.strip()))
installed.pop("facelock-mqtt")
wrong = {n: (v, pins.get(n)) for n, v in installed.items() if pins.get(n) != v}
if wrong:
    sys.exit("installed (version, pin): " + ", ".join(f"{n} {v} {p}" for n, (v, p) in sorted(wrong.items())))
print(f"  all {len(installed)} installed distributions are at their addon/constraints.txt version")
PYEOF

# --- 4. the start path, as the Supervisor runs the add-on ----------------------------------------
t=$(date +%s.%N)
mount_in /proc -t proc proc
mount_in /dev --bind /dev
mount_in /sys --bind -o ro /sys
IMAGE=$WORK/image.json
mapfile -t IMAGE_ENV < <("$PY" -c 'import json,sys; [print(f"{k}={v}") for k, v in json.load(open(sys.argv[1]))["env"].items()]' "$IMAGE")
WORKDIR=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["workdir"])' "$IMAGE")
mapfile -t CMD < <("$PY" -c 'import json,sys; [print(a) for a in json.load(open(sys.argv[1]))["cmd"]]' "$IMAGE")
in_image() { chroot "$ROOTFS" /usr/bin/env -i "${IMAGE_ENV[@]}" "$@"; }
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MQTT_PORT=$(free_port)
SUP_PORT=$(free_port)
PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
TOKEN=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
CHECK=/tmp/facelock-check  # inside the rootfs; gone with it
mkdir -p "$ROOTFS$CHECK" "$ROOTFS/config" "$WORK/broker"

# Mosquitto as the Mosquitto add-on runs it: no anonymous clients.
mosquitto_passwd -b -c "$WORK/broker/passwd" addons "$PASSWORD"
printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous false\npassword_file %s\npersistence false\n' \
    "$MQTT_PORT" "$WORK/broker/passwd" >"$WORK/broker/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/broker/mosquitto.conf" >"$WORK/broker/log" 2>&1 &
PIDS+=($!)
up() {  # up WHAT TEST...: wait up to 10 s for TEST to pass
    local what=$1 i
    shift
    for i in $(seq 100); do "$@" && return 0; sleep 0.1; done
    fail "$what did not start"
}
up Mosquitto grep -q " running" "$WORK/broker/log"
# Home Assistant's view: FaceLock's topics and discovery (not the camera images).
mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -u addons -P "$PASSWORD" -v -t 'facelock/#' -t 'homeassistant/#' \
    -T 'facelock/+/image' -i image-check >"$WORK/mqtt.log" 2>"$WORK/mqtt.err" &
PIDS+=($!)
up mosquitto_sub grep -q " as image-check " "$WORK/broker/log"

# The stand-in Supervisor, run by the image's Python (aiohttp is a FaceLock dependency).
printf '{"result": "ok", "data": {"addon": "core_mosquitto", "host": "127.0.0.1", "port": %s, "ssl": false, "protocol": "3.1.1", "username": "addons", "password": "%s"}}' \
    "$MQTT_PORT" "$PASSWORD" >"$ROOTFS$CHECK/answer.json"
cp "$REPO/tests/addon/supervisor_standin.py" "$ROOTFS$CHECK/"
chroot "$ROOTFS" /usr/bin/python3 "$CHECK/supervisor_standin.py" --port "$SUP_PORT" --token "$TOKEN" \
    --answer-json "$CHECK/answer.json" >"$WORK/supervisor.log" 2>&1 &
PIDS+=($!)

# With the shared face data: enroll one NUAA session, the camera plays another (5 fps clip).
UNLOCK=0
NUAA=$SHARED/data/nuaa/live/s0001
if [ -d "$NUAA" ]; then
    UNLOCK=1
    mkdir -p "$ROOTFS$CHECK/enroll" "$ROOTFS$CHECK/clip"
    frames() { ls "$NUAA" | awk -F_ -v s="$1" '$4 == s' | sort -t_ -k5 -n; }
    frames 01 | head -3 | while read -r f; do cp "$NUAA/$f" "$ROOTFS$CHECK/enroll/"; done
    frames 02 | while read -r f; do cp "$NUAA/$f" "$ROOTFS$CHECK/clip/"; done
    in_image python3 -c '
import glob, sys, cv2
paths = sorted(glob.glob(sys.argv[2] + "/*.jpg"), key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
images = [cv2.imread(p) for p in paths]
h, w = images[0].shape[:2]
out = cv2.VideoWriter(sys.argv[1], cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (w, h))
[out.write(i) for i in images]
out.release()
print(f"clip: {len(images)} frames")' "$CHECK/clip.avi" "$CHECK/clip"
    CAMERA="{\"name\": \"front_door\", \"url\": \"$CHECK/clip.avi\"}"
elif [ -n "${CI:-}" ]; then
    fail "shared face data not found at $SHARED/data (see ../shared/data/README.md)"
else
    echo "  (no shared face data at $SHARED/data: the start path runs without the unlock)"
    CAMERA='{"name": "front_door", "mqtt_topic": "frigate/front_door/person/snapshot"}'
fi

# /data/options.json as the Supervisor writes it: config.yaml's defaults plus one camera. The
# defaults require liveness, which the image now carries (the build's liveness step).
"$PY" - "$REPO/config.yaml" "$ROOTFS/data/options.json" "$CAMERA" <<'PYEOF'
import json, sys, yaml
options = yaml.safe_load(open(sys.argv[1]))["options"]
options["cameras"] = [json.loads(sys.argv[3])]
open(sys.argv[2], "w").write(json.dumps(options, indent=1))
PYEOF
echo "  /data/options.json: $(tr -d '\n' <"$ROOTFS/data/options.json" | tr -s ' ')"
if [ "$UNLOCK" = 1 ]; then
    in_image sh -c "cd $WORKDIR && facelock enroll s0001 $CHECK/enroll/*.jpg" >"$WORK/enroll.log" 2>&1 \
        || { cat "$WORK/enroll.log"; fail "facelock enroll failed in the image"; }
    say "enrolled s0001 from 3 frames of session 01 (facelock enroll, in the image)"
fi
step_done "4a. start path set-up (broker, stand-in, enroll)" "$t"

t=$(date +%s.%N)
say "start: ${CMD[*]} in $WORKDIR, SUPERVISOR_TOKEN set, FACELOCK_SUPERVISOR_URL=http://127.0.0.1:$SUP_PORT"
chroot "$ROOTFS" /usr/bin/env -i "${IMAGE_ENV[@]}" SUPERVISOR_TOKEN="$TOKEN" \
    FACELOCK_SUPERVISOR_URL="http://127.0.0.1:$SUP_PORT" /bin/sh -c "cd $WORKDIR && exec ${CMD[*]}" \
    >"$WORK/start.log" 2>&1 &
ADDON=$!
PIDS+=("$ADDON")
seen() { grep -a -q -E "$1" "$WORK/mqtt.log"; }
last() { grep -a "^$1 " "$WORK/mqtt.log" | tail -1 | cut -d' ' -f2-; }  # last payload on a topic
wait_for() {  # wait_for REGEX SECONDS WHAT
    local deadline=$(($(date +%s) + $2))
    until seen "$1"; do
        if ! kill -0 "$ADDON" 2>/dev/null; then cat "$WORK/start.log"; fail "the add-on exited while waiting for $3"; fi
        if [ "$(date +%s)" -ge "$deadline" ]; then cat "$WORK/start.log"; fail "no $3 within $2 s"; fi
        sleep 0.2
    done
    say "MQTT: $3"
}
wait_for '^homeassistant/lock/[^ ]+/config ' 180 "lock discovery"
wait_for '^facelock/availability online$' 60 "availability online"
wait_for '^facelock/front_door/lock/state LOCKED$' 30 "front_door LOCKED"
if [ "$UNLOCK" = 1 ]; then
    wait_for '^facelock/front_door/lock/state UNLOCKED$' 60 "front_door UNLOCKED (the clip)"
    wait_for '^facelock/front_door/event .*"event_type": ?"recognized"' 10 "recognized event"
    deadline=$(($(date +%s) + 20))
    until [ "$(last facelock/front_door/lock/state)" = LOCKED ]; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "the door did not relock"
        sleep 0.2
    done
    say "MQTT: front_door relocked"
fi
say "SIGTERM"
kill -TERM "$ADDON"
rc=0
wait "$ADDON" || rc=$?
remaining=()
for pid in "${PIDS[@]}"; do [ "$pid" = "$ADDON" ] || remaining+=("$pid"); done
PIDS=("${remaining[@]}")
sleep 0.5
[ "$rc" -eq 0 ] || { cat "$WORK/start.log"; fail "the add-on exited $rc on SIGTERM"; }
[ "$(last facelock/availability)" = offline ] || fail "no offline after SIGTERM"
[ "$(last facelock/front_door/lock/state)" = LOCKED ] || fail "the door's last state is not LOCKED"
! grep -q -F -e "$PASSWORD" -e "$TOKEN" "$WORK/start.log" || fail "a secret reached the add-on's log"
grep -q "liveness on: MiniFASNet" "$WORK/start.log" || { cat "$WORK/start.log"; fail "the add-on started without liveness"; }
say "liveness on from the first start (the models the build installed)"
say "exit 0 on SIGTERM; last states: LOCKED, offline"
step_done "4b. start path (start to exit)" "$t"

echo "--- stand-in Supervisor ---"
cat "$WORK/supervisor.log"
echo "--- add-on log (start to SIGTERM) ---"
sed -e "s#$WORK#<work>#g" "$WORK/start.log"
echo "--- MQTT, as Home Assistant saw it (no sensors; lines cut at 160 characters) ---"
grep -a -v '/sensor/' "$WORK/mqtt.log" | cut -c1-160 | head -40
echo "--- steps ---"
printf '%s\n' "${STEPS[@]}"
say "PASSED"
