"""Each door-condition augmentation changes a real face crop as its docstring states, and the
Augmenter applies only what is switched on and reports what it applied."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facelock_mqtt.pipeline.align import ARCFACE_TEMPLATE
from facelock_mqtt.pipeline.imageio import read_image
from training.augment import CROP_FACE_PX, DEGRADED, Augmenter, degrade_all, grey, jpeg, low_light, low_res, motion_blur, rotate
from training.config import AugmentConfig


@pytest.fixture(scope="module")
def crop(shared_data: Path) -> np.ndarray:
    """A colour LFW crop (aligned 112x112, BGR as the service reads it)."""
    for person in sorted((shared_data / "lfw_aligned_112").iterdir()):
        if person.is_dir():
            image = read_image(sorted(person.iterdir())[0])
            if np.abs(image[..., 2].astype(int) - image[..., 0]).mean() > 5:  # really colour
                return image
    pytest.fail("no colour crop in lfw_aligned_112")


def sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_grey_makes_the_three_channels_equal(crop: np.ndarray) -> None:
    out = grey(crop, rng())
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    # Contrast flattened, never raised: the spread of grey levels is not larger than the input's.
    assert out[..., 0].std() <= cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).std() + 0.5


def test_low_light_darkens_and_adds_noise(crop: np.ndarray) -> None:
    out = low_light(crop, rng())
    assert out.mean() < 0.7 * crop.mean()
    # Noise: the residual after the gamma curve alone is not zero and not smooth.
    again = low_light(crop, np.random.default_rng(1))
    assert not np.array_equal(out, again)


def test_low_res_loses_detail_at_the_stated_face_size(crop: np.ndarray) -> None:
    out = low_res(crop, rng(), (24.0, 24.0))
    assert out.shape == (112, 112, 3)
    assert sharpness(out) < 0.3 * sharpness(crop)
    # Exactly a 24 px face's worth of pixels: it equals the down-up resampling at that scale.
    side = round(112 * 24.0 / CROP_FACE_PX)
    expected = cv2.resize(cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA), (112, 112))
    assert np.array_equal(out, expected)
    assert sharpness(low_res(crop, rng(), (40.0, 40.0))) > sharpness(out)  # larger faces keep more


def test_motion_blur_smears_along_one_direction(crop: np.ndarray) -> None:
    out = motion_blur(crop, rng(), (11, 11))
    assert sharpness(out) < 0.5 * sharpness(crop)
    # A line kernel: a single bright dot becomes a streak (many pixels, thin).
    dot = np.zeros((112, 112, 3), np.uint8)
    dot[56, 56] = 255
    streak = motion_blur(dot, rng(), (11, 11))[..., 0] > 0
    ys, xs = np.nonzero(streak)
    assert 8 <= len(ys) <= 40 and max(np.ptp(ys), np.ptp(xs)) >= 8


def test_jpeg_adds_block_artefacts(crop: np.ndarray) -> None:
    out = jpeg(crop, rng(), (15, 15))
    assert not np.array_equal(out, crop)
    g = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).astype(float) - cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(float)
    # The error jumps across the 8x8 block borders more than inside the blocks.
    steps = np.abs(np.diff(g, axis=1))
    border = steps[:, 7::8].mean()
    inside = np.delete(steps, np.s_[7::8], axis=1).mean()
    assert border > 1.2 * inside


def test_rotate_turns_the_eyes_by_at_most_the_stated_angle(crop: np.ndarray) -> None:
    left, right = ARCFACE_TEMPLATE[0], ARCFACE_TEMPLATE[1]
    marks = np.zeros((112, 112, 3), np.uint8)
    for x, y in (left, right):
        cv2.circle(marks, (round(x), round(y)), 2, (255, 255, 255), -1)
    angles = []
    for seed in range(8):
        out = rotate(marks, np.random.default_rng(seed), 10.0)[..., 0]
        half = [out[:, :56], out[:, 56:]]
        (ly, lx), (ry, rx) = [np.argwhere(h > 127).mean(axis=0) for h in half]
        angles.append(np.degrees(np.arctan2(ry - ly, rx + 56 - lx)))
    assert max(abs(a) for a in angles) <= 10.5 and max(abs(a) for a in angles) > 2.0


def test_augmenter_applies_only_enabled_steps_and_reports_them(crop: np.ndarray) -> None:
    off = Augmenter(AugmentConfig())
    assert np.array_equal(off(crop, rng()), crop) and off.report()["applied"] == {}
    only_grey = Augmenter(AugmentConfig(grey=1.0))
    out = only_grey(crop, rng())
    assert np.array_equal(out[..., 0], out[..., 2])
    assert only_grey.report() == {"images": 1, "applied": {"grey": 1}, "enabled": ["grey"]}
    half = Augmenter(AugmentConfig(jpeg=0.5, rotate=0.5))
    generator = rng()
    for _ in range(200):
        half(crop, generator)
    applied = half.report()["applied"]
    assert set(applied) == {"jpeg", "rotate"} and all(60 < n < 140 for n in applied.values())


def test_degraded_test_slices_are_reproducible(crop: np.ndarray) -> None:
    crops = np.stack([crop, crop[:, ::-1]])
    for name in DEGRADED:
        a, b = degrade_all(crops, name, seed=3), degrade_all(crops, name, seed=3)
        assert np.array_equal(a, b) and not np.array_equal(a, crops), name
