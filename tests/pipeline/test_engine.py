"""The engine on photos far larger than the detection size: a face of a normal size is found and
embedded as well as in a photo of its own."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.settings import ModelSettings, QualitySettings


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> FaceEngine:
    return FaceEngine(default_bundle(tmp_path_factory.mktemp("data")), ModelSettings(), QualitySettings())


@pytest.mark.parametrize("width", [250, 700])
def test_a_face_in_a_144_megapixel_photo_embeds_as_in_its_own_photo(
    engine: FaceEngine, shared_data: Path, width: int
) -> None:
    photo = read_image(shared_data / "deepface/person01/img1.jpg")
    photo = cv2.resize(photo, (width, round(photo.shape[0] * width / photo.shape[1])), interpolation=cv2.INTER_AREA)
    alone = engine.analyze(photo)
    assert alone is not None and alone.quality.ok
    canvas = np.full((12000, 12000, 3), 120, np.uint8)
    canvas[4000 : 4000 + photo.shape[0], 6000 : 6000 + photo.shape[1]] = photo
    found = engine.analyze(canvas)
    assert found is not None and found.quality.ok and found.n_faces == 1
    assert float(found.embedding @ alone.embedding) > 0.9  # aligned from full-resolution landmarks
