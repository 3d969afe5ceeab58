"""Alignment against known landmarks: exact similarity transforms, synthetic dots, real LFW crops."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from facelock_mqtt.errors import ImageError
from facelock_mqtt.models.bundle import load_bundle
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.align import ARCFACE_TEMPLATE, CROP_SIZE, align_face, similarity_transform
from facelock_mqtt.pipeline.detect import Detector, load_detector
from facelock_mqtt.pipeline.imageio import read_image

MARGIN = 56


def similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    angle = math.radians(degrees)
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]], dtype=np.float64)


def centred(scale: float, degrees: float, centre: tuple[float, float]) -> np.ndarray:
    """The similarity that puts the template's centre at `centre`."""
    forward = similarity(scale, degrees, 0.0, 0.0)
    forward[:, 2] = (
        np.asarray(centre) - apply(forward, ARCFACE_TEMPLATE.mean(axis=0, keepdims=True).astype(np.float64))[0]
    )
    return forward


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def inverse(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(matrix.astype(np.float64))


@pytest.mark.parametrize(
    "scale,degrees,tx,ty",
    [(1.0, 0.0, 0.0, 0.0), (2.5, 17.0, 120.0, 80.0), (0.6, -35.0, 10.0, 300.0), (4.0, 170.0, 500.0, 400.0)],
)
def test_similarity_transform_recovers_the_inverse(scale: float, degrees: float, tx: float, ty: float) -> None:
    forward = similarity(scale, degrees, tx, ty)
    landmarks = apply(forward, ARCFACE_TEMPLATE.astype(np.float64))
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(matrix, inverse(forward), atol=1e-3 * max(1.0, 1 / scale))
    np.testing.assert_allclose(apply(matrix, landmarks), ARCFACE_TEMPLATE, atol=1e-3)


def test_similarity_transform_is_least_squares_under_noise() -> None:
    rng = np.random.default_rng(7)
    forward = similarity(3.0, 12.0, 200.0, 150.0)
    landmarks = apply(forward, ARCFACE_TEMPLATE.astype(np.float64)) + rng.normal(0, 1.0, (5, 2))
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    # One pixel of noise at scale 3 is a third of a pixel in the crop.
    assert np.abs(apply(matrix, landmarks) - ARCFACE_TEMPLATE).max() < 1.0
    np.testing.assert_allclose(matrix[:, :2], inverse(forward)[:, :2], atol=0.02)


def test_mirrored_landmarks_give_a_rotation_never_a_reflection() -> None:
    mirrored = ARCFACE_TEMPLATE.copy()
    mirrored[:, 0] = CROP_SIZE - mirrored[:, 0]
    matrix = similarity_transform(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0


@pytest.mark.parametrize("landmarks", [np.full((5, 2), 50.0), np.full((5, 2), np.nan)], ids=["one-point", "nan"])
def test_degenerate_landmarks_are_refused(landmarks: np.ndarray) -> None:
    with pytest.raises(ImageError, match="degenerate face landmarks"):
        align_face(np.full((100, 100, 3), 200, np.uint8), landmarks.astype(np.float32))


def dot_image(forward: np.ndarray, shape: tuple[int, int], radius: int) -> np.ndarray:
    """A black frame with a differently coloured dot at each transformed template landmark."""
    image = np.zeros((*shape, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]  # BGR
    for point, colour in zip(apply(forward, ARCFACE_TEMPLATE.astype(np.float64)), colours, strict=True):
        cv2.circle(image, (round(point[0] * 16), round(point[1] * 16)), radius * 16, colour, -1, cv2.LINE_AA, shift=4)
    return image


def centroid(crop: np.ndarray, around: np.ndarray, half: int = 5) -> np.ndarray:
    x0, y0 = round(float(around[0])) - half, round(float(around[1])) - half
    window = crop[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1].max(axis=2).astype(np.float64)
    ys, xs = np.mgrid[0 : 2 * half + 1, 0 : 2 * half + 1]
    return np.array([(xs * window).sum() / window.sum() + x0, (ys * window).sum() / window.sum() + y0])


@pytest.mark.parametrize("scale,degrees", [(2.5, 0.0), (3.0, 25.0), (4.0, -40.0)])
def test_warped_dots_land_on_the_template(scale: float, degrees: float) -> None:
    forward = centred(scale, degrees, (320.0, 240.0))
    image = dot_image(forward, (480, 640), radius=round(2 * scale))
    crop = align_face(image, apply(forward, ARCFACE_TEMPLATE.astype(np.float64)).astype(np.float32))
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8
    for index, point in enumerate(ARCFACE_TEMPLATE):
        assert np.linalg.norm(centroid(crop, point) - point) < 0.5, f"landmark {index}"
    # Colour order is kept: the left-eye dot is blue (BGR), the nose dot red.
    left_eye = crop[round(ARCFACE_TEMPLATE[0, 1]), round(ARCFACE_TEMPLATE[0, 0])]
    nose = crop[round(ARCFACE_TEMPLATE[2, 1]), round(ARCFACE_TEMPLATE[2, 0])]
    assert left_eye[0] > 200 and left_eye[2] < 50
    assert nose[2] > 200 and nose[0] < 50


def test_landmarks_near_the_frame_edge_leave_a_black_border() -> None:
    forward = similarity(1.5, 0.0, -40.0, -50.0)  # part of the face lies outside the frame
    image = np.full((300, 300, 3), 200, np.uint8)
    crop = align_face(image, apply(forward, ARCFACE_TEMPLATE.astype(np.float64)).astype(np.float32))
    assert crop[0, 0].max() == 0  # outside the frame
    assert crop[CROP_SIZE - 1, CROP_SIZE - 1].min() == 200  # inside it


@pytest.fixture(scope="module", params=["yunet", "scrfd"])
def detector(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_models: Path) -> Detector:
    if request.param == "yunet":
        bundle = default_bundle(tmp_path_factory.mktemp("data"))
    else:
        bundle = load_bundle(shared_models / "pack_like")
    return load_detector(bundle, threads=1, size=640, min_score=0.6)


def lfw_crops(lfw: Path, count: int) -> list[Path]:
    """The first images named in pairs.txt: a fixed, unselected sample."""
    paths: list[Path] = []
    for line in (lfw / "pairs.txt").read_text().split("\n")[1:]:
        name, number = line.split()[:2]
        path = lfw / name / f"{name}_{int(number):04d}.jpg"
        if path not in paths:
            paths.append(path)
        if len(paths) == count:
            return paths
    raise AssertionError("pairs.txt is too short")


def test_detected_landmarks_on_aligned_lfw_crops_are_near_the_template(detector: Detector, shared_data: Path) -> None:
    """The crops were aligned with another detector's landmarks: a few pixels apart, not tens."""
    mean_errors = []
    for path in lfw_crops(shared_data / "lfw_aligned_112", 10):
        # A margin around the tight crop, as a photo has, lets the detector see the whole head.
        crop = read_image(path)
        faces = detector.detect(cv2.copyMakeBorder(crop, *[MARGIN] * 4, cv2.BORDER_CONSTANT))
        assert len(faces) == 1, path.name
        landmarks = faces[0].landmarks - MARGIN
        error = np.linalg.norm(landmarks - ARCFACE_TEMPLATE, axis=1)
        assert error.max() < 10.0, path.name
        mean_errors.append(error.mean())
        # Re-aligning an aligned crop is close to the identity transform.
        matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE)
        scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
        rotation = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
        assert 0.9 < scale < 1.25 and abs(rotation) < 8.0, path.name
    assert np.median(mean_errors) < 4.5
