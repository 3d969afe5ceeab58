# FaceLock add-on image, built by the Supervisor with the repository root as context.
#
# scripts/image-check.sh builds this file without Docker and runs the add-on's start path in
# the result (docs/IMAGE.md). It mirrors every step: FROM becomes a debootstrap of Debian
# bookworm (minbase) with Debian's python3 (3.11) and pip in place of the official image's
# /usr/local Python; ARG defaults, ENV, WORKDIR, COPY and RUN are read from this file and
# carried out as written (RUN with /bin/sh -c in the WORKDIR, under the ENV); the CMD is the
# command it starts. Keep to those instructions (no multi-stage COPY --from, no ADD), or teach
# the script the new one.
# Debian (glibc), not Alpine (musl): onnxruntime and OpenCV ship only glibc wheels. The official
# Python image is multi-arch (amd64, arm64), so one fixed FROM serves both add-on arches.
FROM python:3.11-slim-bookworm

# The Supervisor passes these build arguments; the defaults make a plain `docker build` work.
ARG BUILD_ARCH=amd64
ARG BUILD_VERSION=0.1.0

LABEL io.hass.type="addon" \
      io.hass.name="FaceLock" \
      io.hass.description="Unlocks a door for enrolled faces, as a Home Assistant lock over MQTT; fails secure." \
      io.hass.arch="${BUILD_ARCH}" \
      io.hass.version="${BUILD_VERSION}"

# /data is the add-on's persistent storage (gallery, audit trail, lockout state, prepared
# models) and holds the options.json the Supervisor writes from the add-on's configuration.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    FACELOCK_DATA_DIR=/data \
    FACELOCK_OPTIONS_FILE=/data/options.json

# Only the runtime package: no test or training extras (no torch in the image). Every
# dependency, the build backend and pip itself come at the exact versions of
# addon/constraints.txt (the ones the test suite passed with; wheels for amd64 and aarch64), so
# two builds of one commit install the same files. pip is pinned first: only pip >= 25.3 knows
# --build-constraint, which pins setuptools in pip's isolated build environment.
WORKDIR /usr/src/facelock
COPY pyproject.toml README.md addon/constraints.txt ./
COPY facelock_mqtt ./facelock_mqtt
RUN pip install --constraint constraints.txt pip \
 && pip install --constraint constraints.txt --build-constraint constraints.txt . \
 && rm -rf /usr/src/facelock

COPY addon/run.sh /usr/local/bin/facelock-addon
WORKDIR /data

# Liveness from the first start: the two published Silent-Face weight files (pinned SHA-256)
# are downloaded and converted to the served ONNX models with the runtime's own converter (no
# PyTorch), into the image, where the add-on's `liveness.models` default points. A failed
# download fails the build, so no image ships without liveness. The mirror is a build argument.
ARG LIVENESS_WEIGHTS_URL=https://raw.githubusercontent.com/minivision-ai/Silent-Face-Anti-Spoofing/master/resources/anti_spoof_models/
RUN facelock --data-dir /tmp/facelock-build liveness download --base-url "$LIVENESS_WEIGHTS_URL" \
        --dest /tmp/liveness-weights --out /usr/share/facelock/liveness \
 && rm -rf /tmp/liveness-weights /tmp/facelock-build

# init: false (config.yaml): no s6-overlay; the start script execs the service, which handles
# SIGTERM itself and locks every door on the way out.
CMD ["/usr/local/bin/facelock-addon"]
