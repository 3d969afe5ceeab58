"""Detection: YuNet (default bundle) and SCRFD (insightface-like pack) on real photographs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facelock_mqtt.errors import BundleError
from facelock_mqtt.models.bundle import Bundle, load_bundle
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.detect import Detector, Face, load_detector
from facelock_mqtt.pipeline.imageio import read_image

# Single-person photos of different sizes (330 to 4,352 px) and webcam frames without bystanders.
SINGLE = [
    "deepface/person01/img1.jpg",
    "deepface/person02/img12.jpg",
    "deepface/person03/img49.jpg",
    "deepface/person04/img14.jpg",
    "deepface/person06/img19.jpg",
    "deepface/person09/img25.jpg",
    "deepface/person10/img46.jpg",
    "deepface/person13/img40.jpg",
    "nuaa/live/s0001/0001_00_00_01_0.jpg",
    "nuaa/live/s0004/0004_01_00_02_0.jpg",
    "nuaa/live/s0008/0008_00_00_02_0.jpg",
]
SCENES = {"deepface/scenes/couple.jpg": 2, "deepface/scenes/selfie-many-people.jpg": 5}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, shared_models: Path) -> dict[str, Bundle]:
    return {"yunet": default_bundle(tmp_path_factory.mktemp("data")), "scrfd": load_bundle(shared_models / "pack_like")}


@pytest.fixture(scope="module")
def detectors(bundles: dict[str, Bundle]) -> dict[str, Detector]:
    return {name: load_detector(bundle, threads=2, size=640, min_score=0.6) for name, bundle in bundles.items()}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    return float(inter / (a[2] * a[3] + b[2] * b[3] - inter))


def assert_plausible_landmarks(face: Face) -> None:
    """Image-left eye and mouth corner first, eyes above the nose above the mouth, all in the box."""
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    assert lx < nx < rx and mlx < mrx
    assert max(ly, ry) < ny < min(mly, mry)
    x, y, w, h = face.box
    assert np.all(face.landmarks >= (x, y)) and np.all(face.landmarks <= (x + w, y + h))


@pytest.mark.parametrize("photo", SINGLE)
def test_both_detectors_find_the_one_face_and_agree(
    detectors: dict[str, Detector], shared_data: Path, photo: str
) -> None:
    image = read_image(shared_data / photo)
    found = {name: detector.detect(image) for name, detector in detectors.items()}
    assert [len(faces) for faces in found.values()] == [1, 1]
    yunet, scrfd = found["yunet"][0], found["scrfd"][0]
    assert iou(yunet.box, scrfd.box) > 0.6
    for face in (yunet, scrfd):
        assert_plausible_landmarks(face)
        assert 0.6 <= face.score <= 1.0
        assert face.box.dtype == np.float32 and face.landmarks.shape == (5, 2)
    # Same eyes, to within a fifth of the eye distance.
    eye_distance = np.linalg.norm(yunet.landmarks[1] - yunet.landmarks[0])
    assert np.linalg.norm(yunet.landmarks[:2] - scrfd.landmarks[:2], axis=1).max() < 0.2 * eye_distance


@pytest.mark.parametrize("name", ["yunet", "scrfd"])
@pytest.mark.parametrize("scene,least", SCENES.items())
def test_group_photos_give_several_faces(
    detectors: dict[str, Detector], shared_data: Path, name: str, scene: str, least: int
) -> None:
    faces = detectors[name].detect(read_image(shared_data / scene))
    assert len(faces) >= least
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)  # best first
    for a in range(len(faces)):  # NMS leaves no duplicates
        assert all(iou(faces[a].box, faces[b].box) < 0.4 for b in range(a + 1, len(faces)))


@pytest.mark.parametrize("name", ["yunet", "scrfd"])
def test_mirrored_photo_keeps_image_left_eye_first(
    detectors: dict[str, Detector], shared_data: Path, name: str
) -> None:
    image = read_image(shared_data / SINGLE[0])
    (face,) = detectors[name].detect(image)
    (mirrored,) = detectors[name].detect(np.ascontiguousarray(image[:, ::-1]))
    assert_plausible_landmarks(mirrored)
    width = image.shape[1]
    # The mirror of the right eye is the left eye of the mirrored photo.
    expected_left_eye = (width - 1 - face.landmarks[1, 0], face.landmarks[1, 1])
    eye_distance = np.linalg.norm(face.landmarks[1] - face.landmarks[0])
    assert np.linalg.norm(mirrored.landmarks[0] - expected_left_eye) < 0.2 * eye_distance


@pytest.mark.parametrize("name", ["yunet", "scrfd"])
def test_region_returns_full_frame_coordinates(detectors: dict[str, Detector], shared_data: Path, name: str) -> None:
    """A photo placed inside a larger frame and searched by region: same faces, shifted."""
    photo = read_image(shared_data / "nuaa/live/s0001/0001_00_00_01_0.jpg")
    frame = np.zeros((900, 1200, 3), np.uint8)
    x, y = 350, 200
    frame[y : y + photo.shape[0], x : x + photo.shape[1]] = photo
    region = (x, y, photo.shape[1], photo.shape[0])
    (direct,) = detectors[name].detect(photo)
    (in_frame,) = detectors[name].detect(frame, region)
    np.testing.assert_allclose(in_frame.box, direct.box + np.float32([x, y, 0, 0]), atol=1e-3)
    np.testing.assert_allclose(in_frame.landmarks, direct.landmarks + np.float32([x, y]), atol=1e-3)
    assert in_frame.score == pytest.approx(direct.score, abs=1e-6)


@pytest.mark.parametrize("name", ["yunet", "scrfd"])
def test_region_without_the_face_finds_nothing(detectors: dict[str, Detector], shared_data: Path, name: str) -> None:
    photo = read_image(shared_data / "nuaa/live/s0001/0001_00_00_01_0.jpg")
    (face,) = detectors[name].detect(photo)
    below_face = int(face.box[1] + face.box[3]) + 5  # the shirt; a bystander sits right of the face
    assert detectors[name].detect(photo, (0, below_face, photo.shape[1], photo.shape[0] - below_face)) == []
    assert detectors[name].detect(photo, (0, 0, 0, 0)) == []


@pytest.mark.parametrize("name", ["yunet", "scrfd"])
@pytest.mark.parametrize("shape", [(480, 640), (64, 64), (1080, 1920)])
def test_black_and_flat_images_give_no_faces(detectors: dict[str, Detector], name: str, shape: tuple[int, int]) -> None:
    assert detectors[name].detect(np.zeros((*shape, 3), np.uint8)) == []
    assert detectors[name].detect(np.full((*shape, 3), 128, np.uint8)) == []


@pytest.mark.parametrize("name", ["yunet", "scrfd"])
def test_small_detection_size_still_finds_a_large_face(
    bundles: dict[str, Bundle], shared_data: Path, name: str
) -> None:
    """Frames are scaled to `size` for detection; boxes still come back in frame pixels."""
    image = read_image(shared_data / SINGLE[0])  # 1868 x 1382
    small = load_detector(bundles[name], threads=2, size=160, min_score=0.6).detect(image)
    large = load_detector(bundles[name], threads=2, size=640, min_score=0.6).detect(image)
    assert len(small) == 1 and len(large) == 1
    assert iou(small[0].box, large[0].box) > 0.7


def test_grayscale_photo_converted_to_bgr_is_detected(detectors: dict[str, Detector], shared_data: Path) -> None:
    grey = cv2.cvtColor(read_image(shared_data / SINGLE[1]), cv2.COLOR_BGR2GRAY)
    for detector in detectors.values():
        assert len(detector.detect(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))) == 1


def test_unknown_detector_kind_is_refused(bundles: dict[str, Bundle]) -> None:
    bundle = bundles["yunet"]
    detector = bundle.manifest.detector.model_construct(**{**bundle.manifest.detector.model_dump(), "kind": "mtcnn"})
    strange = Bundle(bundle.path, bundle.manifest.model_copy(update={"detector": detector}))
    with pytest.raises(BundleError, match="unknown detector kind 'mtcnn'"):
        load_detector(strange, threads=1, size=640, min_score=0.6)


@pytest.mark.parametrize("name", ["yunet", "scrfd"])
def test_a_normal_face_in_a_huge_photo_is_found_with_precise_landmarks(
    detectors: dict[str, Detector], shared_data: Path, name: str
) -> None:
    """12000 x 12000 px (144 MP) around a face 175 px wide: scaled whole to the 640 px detection
    size, the face would be 9 px and missed; it is found, with the landmarks it has on its own."""
    photo = cv2.resize(read_image(shared_data / SINGLE[0]), (400, 541), interpolation=cv2.INTER_AREA)
    (alone,) = detectors[name].detect(photo)
    canvas = np.full((12000, 12000, 3), 120, np.uint8)
    x, y = 7000, 3000
    canvas[y : y + photo.shape[0], x : x + photo.shape[1]] = photo
    (found,) = detectors[name].detect(canvas)
    assert_plausible_landmarks(found)
    assert iou(found.box, alone.box + np.float32([x, y, 0, 0])) > 0.8
    eye_distance = np.linalg.norm(alone.landmarks[1] - alone.landmarks[0])
    assert np.linalg.norm(found.landmarks - (alone.landmarks + (x, y)), axis=1).max() < 0.1 * eye_distance
