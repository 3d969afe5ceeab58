"""The signed messages of remote verification: what a broker client without the secret can and
cannot do to them, and that the data they carry arrives bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facelock_mqtt.errors import ConfigError
from facelock_mqtt.remote.protocol import (
    ANSWER,
    CROP_SHAPE,
    REQUEST,
    RemoteFailure,
    ReplayGuard,
    decode_image,
    encode_image,
    gallery_body,
    read_gallery,
    seal,
    unseal,
)  # fmt: skip
from facelock_mqtt.settings import load_settings

SECRET = b"a-test-secret-of-enough-length"
NOW = 1_800_000_000.0


def test_a_sealed_message_opens_with_the_secret():
    payload = seal(SECRET, ANSWER, "c1", {"ok": True, "scores": [[0.5, -0.25]]}, ts=NOW)
    assert unseal(SECRET, payload, ANSWER, 10.0, now=NOW + 1) == ("c1", {"ok": True, "scores": [[0.5, -0.25]]})


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda m: m["body"].update(scores=[[0.99, 0.99]]), id="scores raised"),
        pytest.param(lambda m: m.update(correlation="c2"), id="moved to another attempt"),
        pytest.param(lambda m: m.update(ts=NOW + 5), id="timestamp refreshed"),
        pytest.param(lambda m: m.update(kind=REQUEST), id="kind changed"),
    ],
)
def test_any_change_to_a_signed_message_is_refused(tamper):
    message = json.loads(seal(SECRET, ANSWER, "c1", {"ok": True, "scores": [[0.1, 0.2]]}, ts=NOW))
    tamper(message)
    with pytest.raises(RemoteFailure, match="bad signature"):
        unseal(SECRET, json.dumps(message).encode(), ANSWER, 10.0, now=NOW + 1)


def test_another_secret_and_garbage_are_refused():
    forged = seal(b"the-attackers-guess-of-a-secret", ANSWER, "c1", {"ok": True}, ts=NOW)
    with pytest.raises(RemoteFailure, match="bad signature"):
        unseal(SECRET, forged, ANSWER, 10.0, now=NOW)
    for junk in (b"", b"\xff\xfe", b"[]", b'{"kind": 1}', b"null"):
        with pytest.raises(RemoteFailure):
            unseal(SECRET, junk, ANSWER, 10.0, now=NOW)


def test_a_genuine_message_of_another_kind_or_too_old_is_refused():
    request = seal(SECRET, REQUEST, "c1", {"crops": []}, ts=NOW)
    with pytest.raises(RemoteFailure, match="expected"):
        unseal(SECRET, request, ANSWER, 10.0, now=NOW)
    with pytest.raises(RemoteFailure, match="stale"):
        unseal(SECRET, request, REQUEST, 10.0, now=NOW + 10.5)
    with pytest.raises(RemoteFailure, match="stale"):
        unseal(SECRET, request, REQUEST, 10.0, now=NOW - 11)  # from the future


def test_the_replay_guard_refuses_a_second_copy_and_forgets_old_ids():
    guard = ReplayGuard(max_age_s=10.0)
    guard.check("c1", now=0.0)
    with pytest.raises(RemoteFailure, match="replayed"):
        guard.check("c1", now=5.0)
    guard.check("c2", now=100.0)  # c1 is long past the window: unseal refuses its message as stale
    guard.check("c1", now=100.0)


def test_crops_travel_losslessly_and_a_wrong_shape_is_refused():
    crop = np.random.default_rng(0).integers(0, 256, CROP_SHAPE, dtype=np.uint8)
    assert np.array_equal(decode_image(encode_image(crop), CROP_SHAPE), crop)
    with pytest.raises(RemoteFailure, match="shape"):
        decode_image(encode_image(crop[:80, :80]), CROP_SHAPE)
    with pytest.raises(RemoteFailure):
        decode_image("not base64 at all!", CROP_SHAPE)


def test_the_gallery_round_trips_and_its_digest_versions_it():
    templates = np.random.default_rng(1).normal(size=(3, 128)).astype(np.float32)
    body = gallery_body("bundle-fp", ["ann", "ann", "bob"], templates)
    fingerprint, digest, people, got = read_gallery(body)
    assert (fingerprint, people, digest) == ("bundle-fp", ["ann", "ann", "bob"], body["digest"])
    assert np.array_equal(got, templates)
    renamed = gallery_body("bundle-fp", ["ann", "bob", "bob"], templates)
    assert renamed["digest"] != body["digest"]
    with pytest.raises(RemoteFailure, match="digest"):
        read_gallery({**body, "people": ["ann", "bob", "bob"]})
    empty = read_gallery(gallery_body("bundle-fp", [], np.zeros((0, 0), np.float32)))
    assert empty[2] == [] and empty[3].shape == (0, 0)


def test_remote_mode_without_a_strong_secret_fails_at_start(tmp_path):
    with pytest.raises(ConfigError, match="verify: .*needs a secret"):
        load_settings(data_dir=tmp_path, verify={"mode": "remote"})
    with pytest.raises(ConfigError, match="at least 16"):
        load_settings(data_dir=tmp_path, verify={"mode": "auto", "secret": "short"})
    assert (
        load_settings(data_dir=tmp_path, verify={"mode": "remote", "secret": SECRET.decode()}).verify.mode == "remote"
    )
