"""Motion gate on real photographs: a still desk scene, a face that walks in, lights, masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facelock_mqtt.errors import ConfigError, ImageError
from facelock_mqtt.pipeline.gate import GateStats, MotionGate, expand_region
from facelock_mqtt.settings import GateSettings

FPS = 10.0
FACE_BOX = (60, 280, 160, 160)  # x, y, w, h where the visitor's face is pasted


@pytest.fixture(scope="module")
def scene(shared_data: Path) -> np.ndarray:
    image = cv2.imread(str(shared_data / "nuaa/live/s0001/0001_00_00_01_0.jpg"))
    assert image is not None and image.shape == (480, 640, 3)
    return image


@pytest.fixture(scope="module")
def visitor(shared_data: Path) -> np.ndarray:
    face = cv2.imread(str(shared_data / "lfw_aligned_112/Aaron_Eckhart/Aaron_Eckhart_0001.jpg"))
    assert face is not None
    return cv2.resize(face, FACE_BOX[2:])


class Camera:
    """Frames of a still scene with sensor noise, an optional slow drift and a visitor."""

    def __init__(self, scene: np.ndarray, noise: float = 6.0, seed: int = 0) -> None:
        self.scene = scene.astype(np.float32)
        self.rng = np.random.default_rng(seed)
        # A bank of independent noise fields, one drawn per frame: generating fresh noise for
        # every frame would dominate the test's run time.
        self.noise = self.rng.standard_normal((16, *scene.shape), dtype=np.float32) * noise
        self.count = 0

    @property
    def t(self) -> float:
        return self.count / FPS

    def frame(self, gain: float = 1.0, offset: float = 0.0, paste: np.ndarray | None = None) -> np.ndarray:
        image = self.scene
        if paste is not None:
            image = image.copy()
            x, y, w, h = FACE_BOX
            image[y : y + h, x : x + w] = paste
        noise = self.noise[self.rng.integers(len(self.noise))]
        self.count += 1
        return cv2.addWeighted(image, gain, noise, 1.0, offset, dtype=cv2.CV_8U)


def feed(gate: MotionGate, camera: Camera, count: int, **frame_args):
    return [gate.update(camera.frame(**frame_args), camera.t) for _ in range(count)]


def test_still_scene_with_noise_and_slow_drift_never_passes(scene: np.ndarray) -> None:
    gate, camera = MotionGate(GateSettings()), Camera(scene)
    # 20 s at 10 fps while the room brightens by 30 grey levels (daylight).
    results = [gate.update(camera.frame(offset=0.15 * i), camera.t) for i in range(200)]
    assert not any(r.motion or r.passed for r in results)
    assert max(r.changed_fraction for r in results) < 0.01
    assert gate.stats == GateStats(frames_seen=200, frames_passed=0, motion_events=0)


def test_visit_opens_gate_with_region_around_face_then_holds(scene: np.ndarray, visitor: np.ndarray) -> None:
    gate, camera = MotionGate(GateSettings(hold_s=0.95)), Camera(scene)
    feed(gate, camera, 20)
    arrive = gate.update(camera.frame(paste=visitor), camera.t)
    assert arrive.motion and arrive.passed
    assert arrive.region is not None
    rx, ry, rw, rh = arrive.region
    fx, fy, fw, fh = FACE_BOX
    slack = 6  # one gate pixel is 4.8 frame pixels
    assert rx <= fx + slack and ry <= fy + slack
    assert rx + rw >= fx + fw - slack and ry + rh >= fy + fh - slack
    assert rx >= fx - 40 and ry >= fy - 40 and rx + rw <= fx + fw + 40 and ry + rh <= fy + fh + 40
    stay = feed(gate, camera, 4, paste=visitor)
    assert all(r.motion for r in stay)
    last_motion = camera.t
    # The visitor leaves: the gate holds for hold_s after the last motion, then closes.
    after = [(gate.update(camera.frame(), camera.t), camera.t) for _ in range(30)]
    last_motion = max([last_motion] + [t for r, t in after if r.motion])
    for result, t in after:
        assert result.passed == (t - last_motion <= 0.95)
    assert not after[-1][0].passed
    stats = gate.stats
    assert stats.frames_seen == 55
    assert stats.motion_events == 1
    assert stats.frames_passed == 5 + sum(r.passed for r, _ in after)


def test_sudden_lighting_change_is_not_motion_and_gate_recovers(scene: np.ndarray, visitor: np.ndarray) -> None:
    settings = GateSettings()
    gate, camera = MotionGate(settings), Camera(scene)
    feed(gate, camera, 20)
    lights_off = gate.update(camera.frame(gain=0.5), camera.t)
    assert lights_off.changed_fraction > settings.lighting_fraction
    assert not lights_off.motion and not lights_off.passed and lights_off.region is None
    # The background was re-seeded: the darker room is still, and a visitor is seen in it.
    assert not any(r.motion for r in feed(gate, camera, 20, gain=0.5))
    assert gate.update(camera.frame(gain=0.5, paste=visitor), camera.t).motion
    feed(gate, camera, 40, gain=0.5, paste=visitor)  # the visitor stays, becomes background
    lights_on = gate.update(camera.frame(paste=visitor), camera.t)
    assert not lights_on.motion and lights_on.changed_fraction > settings.lighting_fraction
    assert not any(r.motion for r in feed(gate, camera, 10, paste=visitor))
    assert gate.stats.motion_events == 1


def test_mask_over_the_moving_area_hides_it(scene: np.ndarray, visitor: np.ndarray) -> None:
    x, y, w, h = FACE_BOX
    mask = [[[x - 10, y - 10], [x + w + 10, y - 10], [x + w + 10, y + h + 10], [x - 10, y + h + 10]]]
    gate, camera = MotionGate(GateSettings(), mask=mask), Camera(scene)
    feed(gate, camera, 20)
    visit = feed(gate, camera, 5, paste=visitor)
    assert not any(r.motion or r.passed for r in visit)
    assert gate.stats == GateStats(frames_seen=25, frames_passed=0, motion_events=0)
    # The same visit with a mask elsewhere (top-right corner) is seen.
    gate = MotionGate(GateSettings(), mask=[[[500, 0], [639, 0], [639, 100]]])
    feed(gate, camera, 20)
    assert all(r.motion for r in feed(gate, camera, 5, paste=visitor))


def test_disabled_gate_passes_every_frame(scene: np.ndarray) -> None:
    gate, camera = MotionGate(GateSettings(enabled=False)), Camera(scene)
    results = feed(gate, camera, 5)
    assert all(r.passed and not r.motion and r.region is None for r in results)
    assert gate.stats == GateStats(frames_seen=5, frames_passed=5, motion_events=0)


def test_new_frame_shape_relearns_background(scene: np.ndarray, visitor: np.ndarray) -> None:
    gate, camera = MotionGate(GateSettings()), Camera(scene)
    feed(gate, camera, 10)
    wide = cv2.resize(camera.frame(paste=visitor), (320, 180))  # another aspect ratio: another view
    first = gate.update(wide, camera.t)
    assert not first.motion  # the first frame of a new shape only seeds the background
    assert not gate.update(cv2.resize(camera.frame(paste=visitor), (320, 180)), camera.t).motion


def test_same_view_at_another_size_keeps_the_background(scene: np.ndarray, visitor: np.ndarray) -> None:
    """A camera's gate sub-stream (gate_url): the same gate image, so the background carries over."""
    gate, camera = MotionGate(GateSettings()), Camera(scene)
    feed(gate, camera, 10)
    assert not any(gate.update(cv2.resize(camera.frame(), (320, 240)), camera.t).motion for _ in range(5))
    seen = gate.update(cv2.resize(camera.frame(paste=visitor), (320, 240)), camera.t)
    assert seen.motion and seen.region[0] + seen.region[2] <= 320  # in the small frame's pixels
    assert gate.update(camera.frame(paste=visitor), camera.t).motion  # and back at full size


def test_grey_frames_are_accepted(scene: np.ndarray, visitor: np.ndarray) -> None:
    gate, camera = MotionGate(GateSettings()), Camera(scene)
    for _ in range(10):
        gate.update(cv2.cvtColor(camera.frame(), cv2.COLOR_BGR2GRAY), camera.t)
    assert gate.update(cv2.cvtColor(camera.frame(paste=visitor), cv2.COLOR_BGR2GRAY), camera.t).motion


def test_bad_input_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 3"):
        MotionGate(GateSettings(), mask=[[[0, 0], [10, 10]]])
    gate = MotionGate(GateSettings())
    with pytest.raises(ImageError):
        gate.update(np.zeros((0, 0, 3), np.uint8), 0.0)
    with pytest.raises(ImageError):
        gate.update(np.zeros((48, 64, 3), np.float32), 0.0)
    assert gate.stats.frames_seen == 0


def test_expand_region_grows_about_centre_and_clips() -> None:
    assert expand_region((100, 100, 50, 40), (480, 640), 1.0) == (100, 100, 50, 40)
    assert expand_region((100, 100, 50, 40), (480, 640, 3), 2.0) == (75, 80, 100, 80)
    assert expand_region((0, 440, 100, 40), (480, 640), 3.0) == (0, 400, 200, 80)
    with pytest.raises(ValueError):
        expand_region((0, 0, 10, 10), (480, 640), 0.5)
