"""Liveness: the PyTorch MiniFASNet network, serving the models `liveness install` wrote (their
parity with the PyTorch export: tests/models/test_minifasnet.py), the temporal cue, fail-secure
loading, the weight download, and accuracy on real NUAA frames the operating point never saw."""

from __future__ import annotations

import csv
import dataclasses
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from service_helpers import need_torch

from facelock_mqtt.guards import liveness
from facelock_mqtt.errors import BundleError, ImageError
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.detect import Face
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.pipeline.quality import frontal_rank
from facelock_mqtt.settings import ModelSettings, QualitySettings


@pytest.fixture(scope="module")
def weights(shared_models: Path) -> Path:
    return shared_models / "minifasnet"


@pytest.fixture(scope="module")
def exported(liveness_models: Path) -> Path:
    return liveness_models  # installed by `facelock liveness install` (conftest), no PyTorch


@pytest.fixture(scope="module")
def model(exported: Path) -> liveness.LivenessModel:
    return liveness.LivenessModel.from_dir(exported, threads=1)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> FaceEngine:
    bundle = default_bundle(tmp_path_factory.mktemp("data"))
    return FaceEngine(bundle, ModelSettings(threads=1), QualitySettings())


def best_face(engine: FaceEngine, image: np.ndarray) -> Face:
    faces = engine.faces(image)
    assert faces, "the core detector found no face"
    return max(faces, key=frontal_rank)


def nuaa_rows(shared_data: Path, split: str) -> list[dict[str, str]]:
    with open(shared_data / "nuaa" / "labels.csv", newline="") as fh:
        return [row for row in csv.DictReader(fh) if row["nuaa_split"] == split]


def spread(rows: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    """`n` rows evenly spread over `rows` (covering every session and attack variant)."""
    return [rows[i] for i in np.linspace(0, len(rows) - 1, n).astype(int)]


# --- the network -------------------------------------------------------------------------------


def test_state_dicts_load_strictly_into_their_own_variant_only(weights: Path) -> None:
    minifasnet = need_torch()
    import torch

    for spec in liveness.MODELS:
        net = minifasnet.load_weights(weights / spec.weights_file)
        assert not net.training
        assert net(torch.zeros(2, 3, 80, 80)).shape == (2, 3)
    # The two variants differ (widths, SE blocks): strict loading must notice a swap.
    state = torch.load(weights / liveness.MODELS[0].weights_file, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    with pytest.raises(RuntimeError):
        minifasnet.MiniFASNet(minifasnet.V1SE).load_state_dict(state, strict=True)


# --- crops and fusion --------------------------------------------------------------------------


def test_crop_keeps_the_enlarged_box_inside_the_frame() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :60] = 255
    # A box at the left edge: the 100 px crop is shifted right to x 0..100 (white to 60), not
    # clipped to x 0..75 (which would be white to 80 % of its width).
    patch = liveness.crop_face(image, np.array([0, 25, 50, 50], np.float32), 2.0, size=10)
    assert patch.shape == (10, 10, 3)
    assert patch[:, :5].min() == 255 and patch[:, 7:].max() == 0
    # A scale too large for the frame is capped to the frame height.
    assert liveness.crop_face(image, np.array([80, 40, 20, 20], np.float32), 50.0).shape == (80, 80, 3)
    for bad in ([10, 10, 0, 20], [np.nan, 0, 20, 20], [500, 500, 20, 20]):
        with pytest.raises(ImageError):
            liveness.crop_face(image, np.array(bad, np.float32), 2.7)


def test_fusion_only_lowers_the_cnn_score_and_nan_is_never_live() -> None:
    point = liveness.load_operating_point()
    assert liveness.fuse(0.9, None, point) == 0.9
    assert liveness.fuse(0.9, 1.0, point) == 0.9
    assert liveness.fuse(0.9, 0.0, point) < 0.9
    moved = 2 * point.min_life_motion  # evidence of life: tests/guards/test_liveness_motion.py
    assert not liveness.decide(float("nan"), None, moved, point).live
    assert liveness.decide(1.0, None, moved, point).live


# --- accuracy on real frames -------------------------------------------------------------------


def test_nuaa_test_split_live_frames_pass_and_prints_fail(
    model: liveness.LivenessModel, engine: FaceEngine, shared_data: Path
) -> None:
    """Single frames of the held-out split, CNN only (measured: 36/36 live, 107/108 prints right;
    a single frame shows no motion, so `assess` of one frame is never live)."""
    rows = nuaa_rows(shared_data, "test")
    live = spread([r for r in rows if r["label"] == "live"], 20)
    prints = spread([r for r in rows if r["label"] != "live"], 20)
    assert len(live) == len(prints) == 20
    correct = {}
    for name, sample, expect in (("live", live, True), ("print", prints, False)):
        results = []
        for row in sample:
            image = read_image(shared_data / "nuaa" / row["path"])
            score = model.cnn_score(image, best_face(engine, image).box)
            results.append((score >= model.point.threshold) == expect)
        correct[name] = sum(results)
    assert correct["live"] >= 17 and correct["print"] >= 17, correct


def test_pad_samples_smoke(model: liveness.LivenessModel, engine: FaceEngine, shared_data: Path) -> None:
    folder = shared_data / "pad_samples"
    for path in sorted(folder.rglob("*.jpg")):
        image = read_image(path)  # the EXIF orientation turns the stored 90-degree rotation back
        face = best_face(engine, image)
        score = model.cnn_score(image, face.box)
        assert (score >= model.point.threshold) == (path.parent.name == "live"), (path.name, score)
        assert not model.assess([(image, face)]).live  # one frame: no evidence of life


def live_session(shared_data: Path, engine: FaceEngine, n: int = 5) -> list[tuple[np.ndarray, Face]]:
    """The first frames of a held-out live session in which the person moves a little."""
    rows = [r for r in nuaa_rows(shared_data, "test") if r["label"] == "live" and r["identity"] == "s0006"]
    rows.sort(key=lambda r: int(Path(r["path"]).stem.rsplit("_", 1)[1]))
    images = [read_image(shared_data / "nuaa" / r["path"]) for r in rows[:n]]
    return [(im, best_face(engine, im)) for im in images]


def test_live_motion_passes_the_temporal_cue(model: liveness.LivenessModel, engine: FaceEngine, shared_data: Path) -> None:
    result = model.assess(live_session(shared_data, engine))
    assert result.temporal_score is not None and result.temporal_score >= 0.5, result
    assert result.live, result


def test_a_live_frame_moved_as_one_plane_is_refused(
    model: liveness.LivenessModel, engine: FaceEngine, shared_data: Path
) -> None:
    """A real live frame, translated and rotated as a whole like a photo in a hand: the CNN still
    calls it live, but the face's surroundings move with the face, and that vetoes it."""
    image = live_session(shared_data, engine, n=1)[0][0]
    frames = []
    for step in range(5):
        # About half an eye distance per frame: turned, scaled, slightly sheared and shifted.
        turn = cv2.getRotationMatrix2D((320, 240), 3.0 * step, 1.0 + 0.03 * step)
        turn[0, 1] += 0.03 * step
        turn[:, 2] += (25 * step, 12 * step)
        moved = cv2.warpAffine(image, turn, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)
        frames.append((moved, best_face(engine, moved)))
    result = model.assess(frames)
    assert result.cnn_score >= model.point.threshold  # the CNN alone would let it in
    assert result.temporal_score == 0.0
    assert not result.live
    assert any("held print" in r for r in result.reasons)


def test_unjudgeable_input_fails_secure(model: liveness.LivenessModel, engine: FaceEngine, shared_data: Path) -> None:
    image, face = live_session(shared_data, engine, n=1)[0]
    assert not model.assess([]).live
    outside = Face(np.array([5000, 5000, 50, 50], np.float32), face.landmarks, face.score)
    result = model.assess([(image, outside)])
    assert not result.live and "cannot judge" in result.reasons[0]
    collapsed = Face(face.box, np.zeros((5, 2), np.float32), face.score)
    assert not model.assess([(image, face), (image, collapsed)]).live


# --- installation, verification and the off state ----------------------------------------------


def test_missing_models_turn_liveness_off_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="facelock_mqtt.guards.liveness"):
        assert liveness.load_liveness(tmp_path) is None
        assert liveness.load_liveness(None) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("LIVENESS DETECTION IS OFF" in r.getMessage() for r in warnings)
    assert liveness.liveness_status(None) == liveness.STATUS_OFF


def test_installed_models_load_and_report_status(exported: Path) -> None:
    loaded = liveness.load_liveness(exported, threads=1)
    assert loaded is not None
    assert liveness.liveness_status(loaded).startswith("on: MiniFASNetV2@2.7 + MiniFASNetV1SE@4")


def test_tampered_or_foreign_models_are_refused(exported: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    shutil.copytree(exported, folder)
    target = folder / liveness.MODELS[1].onnx_file
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        liveness.LivenessModel.from_dir(folder)
    with pytest.raises(BundleError):  # an install that is present but broken stops the service
        liveness.load_liveness(folder)
    # Models exported from other weights than the calibrated ones are refused too.
    shutil.rmtree(folder)
    shutil.copytree(exported, folder)
    manifest = (folder / liveness.MANIFEST).read_text()
    (folder / liveness.MANIFEST).write_text(manifest.replace(liveness.MODELS[0].weights_sha256, "0" * 64))
    with pytest.raises(BundleError, match="other weights"):
        liveness.LivenessModel.from_dir(folder)


def test_download_checks_sha256(weights: Path, web_root: tuple[Path, str], tmp_path: Path) -> None:
    root, url = web_root
    for spec in liveness.MODELS:
        shutil.copy(weights / spec.weights_file, root / spec.weights_file)
    dest = tmp_path / "weights"
    paths = liveness.download_weights(dest, base_url=url, timeout=10)
    assert [p.name for p in paths] == [s.weights_file for s in liveness.MODELS]
    assert all(liveness.sha256_file(p) == s.weights_sha256 for p, s in zip(paths, liveness.MODELS))
    # A server handing out other bytes: refused, and nothing left under the final name.
    (root / liveness.MODELS[0].weights_file).write_bytes(b"not the weights")
    fresh = tmp_path / "fresh"
    with pytest.raises(BundleError, match="SHA-256"):
        liveness.download_weights(fresh, base_url=url, timeout=10)
    assert list(fresh.iterdir()) == []
    with pytest.raises(BundleError, match="cannot download"):
        liveness.download_weights(tmp_path / "none", base_url=url + "missing/", timeout=10)


class CountingSession:
    """A real onnxruntime session that counts its runs."""

    def __init__(self, session) -> None:
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)


def test_prepared_frames_give_the_same_verdict_without_running_anything_again(
    exported: Path, engine: FaceEngine, shared_data: Path
) -> None:
    fresh_model = liveness.LivenessModel.from_dir(exported)
    model = liveness.LivenessModel.from_dir(exported)  # its own: the memo must start empty
    counting = [(spec, CountingSession(session)) for spec, session in model.sessions]
    model.sessions = counting
    runs = lambda: sum(s.runs for _, s in counting)  # noqa: E731
    frames = live_session(shared_data, engine, n=3)
    try:
        for i, (image, face) in enumerate(frames):  # as the door does: each frame after the attempt's so far
            model.prepare(frames[:i], image, face).result(timeout=30)
        kept, ran = len(model.memo), runs()
        assert kept == 3 + 2 * 2  # a CNN score per frame; a pair and a shift from frame 2 on
        assert model.wants_more_frames(frames) == fresh_model.wants_more_frames(frames)
        assert model.assess(frames) == fresh_model.assess(frames)  # every field, reasons included
        assert runs() == ran and len(model.memo) == kept  # all taken from the memo: nothing ran again

        image, face = frames[0]
        moved = face.box + np.array([4, 0, 0, 0], dtype=face.box.dtype)
        model.cnn_score(image, moved)  # another box on the same frame: scored afresh
        model.cnn_score(image.copy(), face.box)  # the same pixels in another frame object: scored afresh
        assert runs() == ran + 2 * len(counting)
        nudged = dataclasses.replace(frames[1][1], landmarks=frames[1][1].landmarks + 1.0)
        model.shift(frames[0], (frames[1][0], nudged))  # other landmarks: another piece of evidence
        assert len(model.memo) == kept + 3
    finally:
        model.close()
        fresh_model.close()


def test_a_frame_that_cannot_be_judged_is_not_kept_and_assess_still_refuses_it(
    exported: Path, engine: FaceEngine, shared_data: Path
) -> None:
    model = liveness.LivenessModel.from_dir(exported)
    (image, face), (image2, face2) = live_session(shared_data, engine, n=2)
    outside = dataclasses.replace(face2, box=np.array([5000.0, 5000.0, 50.0, 50.0], dtype=np.float32))
    model.prepare([], image, face).result(timeout=30)
    model.prepare([(image, face)], image2, outside).result(timeout=30)  # no exception on the door's path
    assert len(model.memo) == 1  # the first frame's CNN score only
    result = model.assess([(image, face), (image2, outside)])
    assert not result.live and "cannot judge liveness" in result.reasons[0]
    model.close()
    with pytest.raises(RuntimeError):  # after the service's shutdown nothing more is started
        model.prepare([], image, face)
