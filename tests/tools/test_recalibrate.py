"""`facelock recalibrate` on real faces: NUAA people enrolled, a cohort of LFW impostors passed
through the door camera's conditions (a dark camera's drift state), and a cohort that holds an
enrolled person's own faces under another name, which the check must refuse (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from service_helpers import nuaa_frames

from facelock_mqtt.cli import main, recognizer
from facelock_mqtt.guards.drift import DriftMonitor
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.settings import load_settings
from facelock_mqtt.tools.recalibrate import poisson_bounds, verdict

PEOPLE = ("s0001", "s0004")


@pytest.fixture
def data_dir(tmp_path: Path, shared_data: Path) -> Path:
    data_dir = tmp_path / "data"
    rec = recognizer(load_settings(data_dir=data_dir))
    for person in PEOPLE:
        assert rec.enroll(person, [(str(p), read_image(p)) for p in nuaa_frames(shared_data, person, "01")[:3]]) == 3
    monitor = DriftMonitor.for_door("front", load_settings().drift.model_copy(update={"reference_days": 0.0}), data_dir)
    for path in nuaa_frames(shared_data, "s0003", "01"):  # the camera now shows dark faces
        result = rec.engine.analyze((read_image(path) * 0.4).astype(np.uint8))
        if result is not None:
            monitor.observe_face(result)
    monitor.save()
    rec.close()
    return data_dir


def run(capsys, monkeypatch, data_dir: Path, *argv: str) -> tuple[int, dict]:
    monkeypatch.setenv("FACELOCK_DATA_DIR", str(data_dir))
    monkeypatch.setenv("FACELOCK_OPTIONS_FILE", str(data_dir / "none"))
    capsys.readouterr()
    code = main(["recalibrate", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_bounds_and_verdicts():
    assert poisson_bounds(0, 3_000_000)[1] == pytest.approx(1e-6, rel=0.01)  # the rule of three
    assert verdict(0, 3_100_000, 1e-6)["verdict"] == "meets"
    assert verdict(0, 1_000, 1e-6)["verdict"] == "not shown"
    assert verdict(9, 1_000, 1e-3)["verdict"] == "refused"
    assert verdict(2, 1_000, 1e-3)["verdict"] == "not shown"  # 2 in 1,000 is not significantly above 1e-3


def test_lfw_impostors_through_a_dark_camera_do_not_refute_the_served_threshold(capsys, monkeypatch, data_dir, shared_data):
    code, result = run(capsys, monkeypatch, data_dir, "--data", str(shared_data / "lfw_aligned_112"), "--cohort", "300")
    front = result["doors"]["front"]
    assert code == 0 and front["served"] != "refused", front
    assert front["conditions"]["brightness"] < 80  # the camera's dark faces, not LFW's
    assert result["cohort"] == 300 and front["thresholds"][0]["comparisons"] == 300 * result["templates"]
    assert result["genuine"]["pairs"] == 2 * 3 and set(result["genuine"]["lowest"]) == set(PEOPLE)


def test_a_cohort_holding_an_enrolled_face_is_refused(capsys, monkeypatch, data_dir, shared_data, tmp_path):
    rec = recognizer(load_settings(data_dir=data_dir))
    cohort = tmp_path / "cohort" / "not_s0001"
    cohort.mkdir(parents=True)
    for i, path in enumerate(nuaa_frames(shared_data, "s0001", "02")):
        result = rec.engine.analyze(read_image(path))
        cv2.imwrite(str(cohort / f"{i}.png"), result.crop)
    rec.close()
    monkeypatch.setenv("FACELOCK_MATCH__TARGET_FAR", "0.001")
    code, result = run(capsys, monkeypatch, data_dir, "--data", str(cohort.parent), "--cohort", "50")
    assert code == 1 and result["doors"]["front"]["served"] == "refused", result["doors"]["front"]
