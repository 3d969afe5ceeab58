"""The evidence-of-life measurement (`training.liveness_life`) on a few real NUAA frames: its still
pictures really are noisy re-encoded copies, they measure under the shipped threshold, a live
session shows life at once, and the threshold it would write comes from the stills only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from service_helpers import nuaa_frames

from facelock_mqtt.guards import liveness
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.settings import ModelSettings, QualitySettings
from training import liveness_life

POINT = liveness.load_operating_point()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> FaceEngine:
    return FaceEngine(default_bundle(tmp_path_factory.mktemp("data")), ModelSettings(threads=1), QualitySettings())


def test_a_still_copy_is_the_picture_with_fresh_noise(shared_data: Path) -> None:
    image = read_image(nuaa_frames(shared_data, "s0001", "02")[0])
    rng = np.random.default_rng(0)
    first, second = (liveness_life.still_copy(image, 2.0, 90, rng) for _ in range(2))
    assert first.shape == image.shape
    assert not np.array_equal(first, second)  # fresh noise: stream sanity sees no frozen picture
    assert np.abs(first.astype(float) - image).mean() < 4.0  # and still the same picture


def test_stills_measure_under_the_threshold_and_a_live_session_over_it(engine, shared_data: Path) -> None:
    image = read_image(nuaa_frames(shared_data, "s0004", "01")[0])
    for condition, values in liveness_life.still_attempts(engine, [image], 2).items():
        assert values and max(values) < POINT.min_life_motion, (condition, values)
    pairs = liveness_life.detected(engine, [read_image(p) for p in nuaa_frames(shared_data, "s0004", "01")[:5]])
    sessions = [({"live": True, "identity": "s0004", "cnn": [1.0] * 5}, pairs)]
    assert liveness_life.frames_to_evidence(sessions, POINT.min_life_motion, 5) == [2]
    identity, cnn, motion = liveness_life.windows(sessions, 2, live=True)[0]
    assert identity == "s0004" and cnn == 1.0 and motion >= POINT.min_life_motion
