"""Evidence of life (`liveness_motion.face_motion`) on real NUAA frames and real YuNet faces: a
still picture repeated with fresh noise shows none, a live session and a known sub-pixel shift
do; and the fusion: without evidence of life nothing is live, whatever the CNN says."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from service_helpers import nuaa_frames

from facelock_mqtt.guards import liveness
from facelock_mqtt.guards.liveness_motion import face_motion
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.detect import Face
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.pipeline.quality import frontal_rank
from facelock_mqtt.settings import ModelSettings, QualitySettings

POINT = liveness.load_operating_point()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> FaceEngine:
    return FaceEngine(default_bundle(tmp_path_factory.mktemp("data")), ModelSettings(threads=1), QualitySettings())


def framed(engine: FaceEngine, images: list[np.ndarray]) -> list[tuple[np.ndarray, Face]]:
    """(image, face) as the door hands them to liveness: the face re-detected in every frame."""
    out = []
    for image in images:
        faces = engine.faces(image)
        assert faces, "the detector found no face"
        out.append((image, max(faces, key=frontal_rank)))
    return out


def still_copies(image: np.ndarray, n: int, sigma: float, seed: int) -> list[np.ndarray]:
    """`n` copies of one picture, each with fresh noise and JPEG-encoded, as a stream carries them."""
    rng = np.random.default_rng(seed)
    copies = []
    for _ in range(n):
        noisy = np.clip(image + rng.normal(0.0, sigma, image.shape), 0, 255).astype(np.uint8)
        copies.append(cv2.imdecode(cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 85])[1], cv2.IMREAD_COLOR))
    return copies


def shift(image: np.ndarray, dx: float, dy: float = 0.0) -> np.ndarray:
    move = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, move, image.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def stills(shared_data: Path) -> list[np.ndarray]:
    """The first live frame of three people's sessions (large and small faces, glasses)."""
    sessions = (("s0001", "02"), ("s0004", "01"), ("s0007", "03"))
    return [read_image(nuaa_frames(shared_data, who, session)[0]) for who, session in sessions]


@pytest.mark.parametrize("sigma", [1.0, 3.0, 8.0])
def test_a_still_picture_with_fresh_noise_shows_no_evidence_of_life(engine, stills, sigma):
    for seed, image in enumerate(stills):
        frames = framed(engine, still_copies(image, 5, sigma, seed))
        motion = face_motion(frames)
        assert motion is not None and motion < POINT.min_life_motion, (seed, motion)
        result = liveness.decide(0.99, None, motion, POINT)
        assert not result.live and result.reasons[0].startswith("no evidence of life: the face did not move"), result


def test_a_still_picture_at_a_third_of_its_size_shows_no_evidence_of_life(engine, stills):
    """Small faces (about 50 px) have the highest noise floor: still under the threshold."""
    for seed, image in enumerate(stills):
        small = cv2.resize(image, None, fx=0.33, fy=0.33, interpolation=cv2.INTER_AREA)
        motion = face_motion(framed(engine, still_copies(small, 5, 2.0, seed)))
        assert motion is not None and motion < POINT.min_life_motion, (seed, motion)


def test_flicker_and_a_hand_over_the_face_are_not_life(engine, stills):
    """An auto-exposure step and a dark bar over a corner of the face change pixels, not position
    (a step that saturates bright skin can read as motion: docs/LIVENESS.md, limits)."""
    for image in stills:
        face = framed(engine, [image])[0][1]
        x, y, w, h = (int(v) for v in face.box)
        brighter = np.clip(image * 1.1, 0, 255).astype(np.uint8)
        covered = image.copy()
        covered[y + h // 2 : y + h, x : x + w // 4] = 40
        assert face_motion(framed(engine, [image, brighter])) < POINT.min_life_motion
        assert face_motion(framed(engine, [image, covered])) < POINT.min_life_motion


def test_a_sub_pixel_shift_of_the_face_is_seen(engine, stills):
    """What a live face does between frames, at its smallest: the face moves. 1 % of the face's
    width (1 to 2 px here) is seen in every picture, with noise on both copies."""
    for seed, image in enumerate(stills):
        width = float(framed(engine, [image])[0][1].box[2])
        pair = still_copies(image, 1, 2.0, seed) + still_copies(shift(image, 0.01 * width), 1, 2.0, seed + 10)
        motion = face_motion(framed(engine, pair))
        assert 0.007 <= motion <= 0.013, motion
        assert motion >= POINT.min_life_motion


@pytest.mark.parametrize(("person", "session"), [("s0001", "02"), ("s0005", "01"), ("s0007", "03")])
def test_a_live_nuaa_session_shows_evidence_of_life(engine, shared_data, person, session):
    """Consecutive captures of a real session (about 2 s apart in NUAA), the first five frames."""
    frames = framed(engine, [read_image(p) for p in nuaa_frames(shared_data, person, session)[:5]])
    motion = face_motion(frames)
    assert motion is not None and motion >= POINT.min_life_motion, motion
    alive, why = liveness.life_reason(motion, POINT)
    assert alive and why.startswith("the face moved"), why


def test_a_face_that_left_its_first_region_counts_by_its_landmarks(engine, stills):
    """Moved by more than a quarter of its width, the face leaves the first frame's region; its
    landmarks then say how far it went."""
    image = stills[0]
    width = float(framed(engine, [image])[0][1].box[2])
    motion = face_motion(framed(engine, [image, shift(image, 0.4 * width)]))
    assert motion >= 0.3, motion


def test_nothing_to_compare_is_no_evidence(engine, stills):
    image = stills[0]
    one = framed(engine, [image])
    assert face_motion(one) is None
    smaller = cv2.resize(image, None, fx=0.5, fy=0.5)
    assert face_motion(one + framed(engine, [smaller])) is None  # a resolution change mid-attempt
    alive, why = liveness.life_reason(None, POINT)
    assert not alive and "fewer than two comparable frames" in why


def test_without_evidence_of_life_nothing_is_live():
    above, below = 2 * POINT.min_life_motion, POINT.min_life_motion / 2
    assert liveness.decide(0.99, None, above, POINT).live
    assert not liveness.decide(0.99, None, below, POINT).live  # the CNN cannot outvote a still face
    assert not liveness.decide(0.99, None, None, POINT).live
    assert not liveness.decide(0.99, None, float("nan"), POINT).live
    assert not liveness.decide(0.0, None, above, POINT).live  # motion alone is no proof either
    result = liveness.decide(0.99, None, below, POINT)
    assert result.life_motion == below and result.cnn_score == 0.99


def test_the_shipped_threshold_says_how_it_was_measured():
    assert 0.0 < POINT.min_life_motion < 0.01
    assert "training.liveness_life" in POINT.life_chosen_on
    assert POINT.measured["life_noise_floor"] * 2 <= POINT.min_life_motion + 1e-12


@pytest.fixture(scope="module")
def model(liveness_models: Path) -> liveness.LivenessModel:
    return liveness.LivenessModel.from_dir(liveness_models, threads=1)


def test_the_door_waits_for_life_only_while_it_may_still_come(model, engine, stills, shared_data):
    still = framed(engine, still_copies(stills[0], liveness.LIFE_MAX_FRAMES, 2.0, 0))
    assert model.wants_more_frames(still[:2])  # no motion yet: take another frame
    assert not model.wants_more_frames(still)  # the most it may take: conclude (assess says spoof)
    assert not model.assess(still).live
    live = framed(engine, [read_image(p) for p in nuaa_frames(shared_data, "s0001", "02")[:2]])
    assert not model.wants_more_frames(live)  # the face already moved: no wait, no added latency
    assert model.assess(live).live
