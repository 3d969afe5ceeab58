"""The `facelock` command line: errors on bad input, and the --json reports of each command."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from facelock_mqtt.cli import main, parser
from facelock_mqtt.models.bundle import Bundle
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.settings import MatchSettings

ALICE = ["person01/img1.jpg", "person01/img2.jpg"]
BOB = ["person03/img47.jpg", "person03/img48.jpg"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return default_bundle(tmp_path_factory.mktemp("data"))


@pytest.fixture
def data_dir(tmp_path: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data folder (own gallery) that shares the already built default bundle."""
    data = tmp_path / "facelock"
    data.mkdir()
    (data / "bundles").symlink_to(bundle.path.parent, target_is_directory=True)
    monkeypatch.setenv("FACELOCK_DATA_DIR", str(data))
    monkeypatch.setenv("FACELOCK_OPTIONS_FILE", str(tmp_path / "no-options.json"))
    return data


@pytest.fixture
def deepface(shared_data: Path) -> Path:
    return shared_data / "deepface"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facelock: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["enroll"], ["enroll", "alice"], ["eval", "lfw"], ["eval", "mnist", "--data", "x"],
     ["--threads", "abc", "people"], ["verify", "a.jpg"]],
    ids=["none", "unknown-command", "enroll-nothing", "enroll-no-images", "eval-no-data", "eval-bad-protocol",
         "threads-not-int", "verify-one-image"],
)  # fmt: skip
def test_bad_arguments_exit_2_with_one_error_line(
    capsys: pytest.CaptureFixture[str], data_dir: Path, argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("facelock") and ": error: " in lines[0] and "--help" in lines[0]


def test_help_still_shows_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "enroll", "--help")
    assert code == 0 and out.startswith("usage: facelock enroll")


@pytest.mark.parametrize(
    "argv,fragment",
    [(["--threads", "0", "people"], "model.threads"), (["--target-far", "0.5", "people"], "match.target_far")],
)
def test_invalid_settings_give_one_line_naming_the_setting(
    capsys: pytest.CaptureFixture[str], data_dir: Path, argv: list[str], fragment: str
) -> None:
    assert_one_line_error(*run(capsys, *argv), "invalid settings", fragment)


def test_missing_image_file(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    assert_one_line_error(*run(capsys, "enroll", "alice", str(missing)), str(missing), "no such file")
    assert_one_line_error(*run(capsys, "identify", str(missing)), "no such file")
    assert not (data_dir / "gallery.db").exists() or run_json(capsys, "people") == []


@pytest.mark.parametrize(
    "content",
    [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 64],
    ids=["empty", "text", "jpeg-header-only"],
)
def test_unreadable_image(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path, content: bytes) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(content)
    assert_one_line_error(*run(capsys, "identify", str(corrupt)), str(corrupt))
    assert_one_line_error(*run(capsys, "verify", str(corrupt), str(corrupt)), str(corrupt))


def test_truncated_photo_is_refused(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path, deepface: Path
) -> None:
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((deepface / ALICE[0]).read_bytes()[:1000])
    assert_one_line_error(*run(capsys, "enroll", "alice", str(truncated)), "not a decodable image")


def test_folder_given_as_image(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    assert_one_line_error(*run(capsys, "identify", str(tmp_path)), "cannot read")


def test_refused_enrollment_is_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], data_dir: Path, deepface: Path
) -> None:
    code, out, err = run(capsys, "enroll", "carol", str(deepface / ALICE[0]), str(deepface / "scenes/couple.jpg"))
    assert_one_line_error(code, out, err, "enrollment refused, nothing written", "faces found")
    assert run_json(capsys, "people") == []


def test_enroll_people_identify_verify_remove(
    capsys: pytest.CaptureFixture[str], data_dir: Path, deepface: Path
) -> None:
    assert run_json(capsys, "enroll", "alice", *(str(deepface / f) for f in ALICE)) == {"person": "alice", "added": 2}
    assert run_json(capsys, "enroll", "bob", *(str(deepface / f) for f in BOB)) == {"person": "bob", "added": 2}
    people = run_json(capsys, "people")
    assert [(p["name"], p["samples"]) for p in people] == [("alice", 2), ("bob", 2)]

    found = run_json(capsys, "identify", str(deepface / "person01/img10.jpg"))
    assert found["person"] == "alice" and found["accepted"] is True and found["reason"] == "match"
    assert found["second_person"] == "bob" and found["score"] > found["threshold"]
    assert found["margin"] == pytest.approx(found["score"] - found["second_score"], abs=2e-4)
    assert found["target_far"] == MatchSettings().target_far and found["faces"] == 1
    assert found["quality"] == {"ok": True, "reasons": []}

    stranger = run_json(capsys, "identify", str(deepface / "person04/img14.jpg"))
    assert stranger["accepted"] is False and stranger["score"] < stranger["threshold"]
    assert stranger["person"] is None and stranger["candidate"] in {"alice", "bob"}  # a refusal names nobody

    same = run_json(capsys, "verify", str(deepface / ALICE[0]), str(deepface / "person01/img10.jpg"))
    assert same["same_person"] is True and same["score"] > same["threshold"]
    different = run_json(capsys, "verify", str(deepface / ALICE[0]), str(deepface / BOB[0]))
    assert different["same_person"] is False and different["threshold"] == same["threshold"]

    assert run_json(capsys, "people", "--remove", "alice") == {"removed": "alice"}
    assert [p["name"] for p in run_json(capsys, "people")] == ["bob"]
    assert_one_line_error(*run(capsys, "people", "--remove", "alice"), "no enrolled person named 'alice'")


def test_identify_without_a_face(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 90, np.uint8))
    found = run_json(capsys, "identify", str(blank))
    assert found == {"reason": "no face", "accepted": False}


def test_text_output_without_json(capsys: pytest.CaptureFixture[str], data_dir: Path, deepface: Path) -> None:
    code, out, _ = run(capsys, "people")
    assert code == 0 and out.strip() == "nobody enrolled"
    code, out, _ = run(capsys, "verify", str(deepface / ALICE[0]), str(deepface / ALICE[1]))
    assert code == 0 and out.startswith("same person (score ")


def small_lfw(shared_data: Path, target: Path) -> Path:
    """An LFW-style folder of 4 people with a 2-fold, 2+2-pairs-per-fold pairs.txt."""
    lfw = shared_data / "lfw_aligned_112"
    people = {"Akhmed_Zakayev": [1, 2, 3], "Amber_Tamblyn": [1, 2], "Dean_Barker": [1], "Abel_Pacheco": [1, 4]}
    for name, numbers in people.items():
        (target / name).mkdir(parents=True)
        for n in numbers:
            shutil.copy(lfw / name / f"{name}_{n:04d}.jpg", target / name)
    pairs = [
        "2\t2", "Akhmed_Zakayev\t1\t3", "Amber_Tamblyn\t1\t2", "Akhmed_Zakayev\t1\tDean_Barker\t1",
        "Amber_Tamblyn\t1\tAbel_Pacheco\t4", "Abel_Pacheco\t1\t4", "Akhmed_Zakayev\t2\t3",
        "Abel_Pacheco\t1\tDean_Barker\t1", "Akhmed_Zakayev\t2\tAmber_Tamblyn\t2",
    ]  # fmt: skip
    (target / "pairs.txt").write_text("\n".join(pairs) + "\n")
    return target


def test_eval_lfw_json_report(
    capsys: pytest.CaptureFixture[str], data_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    data = small_lfw(shared_data, tmp_path / "lfw")
    report_file = tmp_path / "lfw.json"
    code, out, err = run(capsys, "eval", "lfw", "--data", str(data), "--json", str(report_file))
    assert code == 0, err
    assert out.startswith("LFW 10-fold accuracy ")
    report = json.loads(report_file.read_text())
    # Two folds of four pairs: each fold's threshold comes from the other fold alone.
    assert 0.5 <= report["accuracy"] <= 1.0 and report["accuracy_std"] >= 0.0
    assert set(report["tar_at_far"]) == {"1e-3", "1e-4", "1e-5", "1e-6"}
    assert set(report["threshold_at_far"]) == set(report["tar_at_far"])
    # 8 images of 4 people: 3 + 1 + 1 genuine pairs, 28 - 5 impostor pairs; far too few for low FARs.
    assert (report["n_genuine"], report["n_impostor"], report["n_images"]) == (5, 23, 8)
    assert not any(report["far_supported"].values())
    assert report["ms_per_face"] > 0


def test_eval_lfw_errors(capsys: pytest.CaptureFixture[str], data_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    data = small_lfw(shared_data, tmp_path / "lfw")
    assert_one_line_error(
        *run(capsys, "eval", "lfw", "--data", str(data), "--pairs", str(tmp_path / "x.txt")), "not found"
    )
    (data / "pairs.txt").write_text("2\t2\nAkhmed_Zakayev\t1\t3\n")
    assert_one_line_error(*run(capsys, "eval", "lfw", "--data", str(data)), "expected 8 pairs, found 1")
    assert_one_line_error(*run(capsys, "eval", "folder", "--data", str(tmp_path / "none")), "is not a folder")


def test_eval_folder_json_report(
    capsys: pytest.CaptureFixture[str], data_dir: Path, deepface: Path, tmp_path: Path
) -> None:
    data = tmp_path / "faces"
    for name, files in {"alice": ALICE + ["person01/img10.jpg"], "bob": BOB}.items():
        (data / name).mkdir(parents=True)
        for i, file in enumerate(files):
            shutil.copy(deepface / file, data / name / f"{i}_centerlight.jpg")
    shutil.copy(deepface / "person03/img8.jpg", data / "bob" / "9_leftlight.jpg")
    cv2.imwrite(str(data / "bob" / "wall.png"), np.full((240, 320, 3), 90, np.uint8))
    report_file = tmp_path / "folder.json"
    code, _, err = run(capsys, "eval", "folder", "--data", str(data), "--json", str(report_file))
    assert code == 0, err
    report = json.loads(report_file.read_text())
    assert (report["n_images"], report["n_no_face"], report["n_genuine"], report["n_impostor"]) == (7, 1, 6, 9)
    assert report["no_face"] == [str(data / "bob" / "wall.png")]
    assert set(report["slices"]) == {"all", "centerlight", "leftlight"}
    assert report["slices"]["leftlight"]["n_images"] == 1
    assert report["slices"]["leftlight"]["n_genuine"] == 2 and report["slices"]["leftlight"]["n_impostor"] == 3
    assert report["tar_at_far"]["1e-3"] == 1.0
    assert report["worst_slice"] in {"centerlight", "leftlight"}
    calibrated = report["slices"]["all"]["at_calibrated"]["1e-6"]
    assert calibrated["tar"] == 1.0 and calibrated["far"] == 0.0


def test_eval_folder_leaves_out_files_labels_csv_does_not_list(
    capsys: pytest.CaptureFixture[str], data_dir: Path, deepface: Path, tmp_path: Path
) -> None:
    data = tmp_path / "faces"
    for name, files in {"alice": ALICE, "bob": BOB, "scenes": ["scenes/couple.jpg"]}.items():
        (data / name).mkdir(parents=True)
        for file in files:
            shutil.copy(deepface / file, data / name)
    (data / "labels.csv").write_text("file,identity\n" + "".join(f"{Path(f).name},x\n" for f in ALICE + BOB))
    report_file = tmp_path / "folder.json"
    code, _, err = run(capsys, "eval", "folder", "--data", str(data), "--json", str(report_file))
    assert code == 0, err
    report = json.loads(report_file.read_text())
    assert (report["n_images"], report["n_genuine"], report["n_impostor"]) == (4, 2, 4)


def facelock_script() -> str:
    """The console script: on PATH, or beside this Python (a venv that is not activated)."""
    script = shutil.which("facelock") or shutil.which("facelock", path=str(Path(sys.executable).parent))
    assert script is not None, "the facelock console script is not installed (pip install -e .)"
    return script


def test_console_script_error_is_one_line(tmp_path: Path, bundle: Bundle) -> None:
    script = facelock_script()
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\x89PNG broken")
    env = {
        **os.environ,
        "FACELOCK_DATA_DIR": str(bundle.path.parent.parent),
        "FACELOCK_OPTIONS_FILE": str(tmp_path / "none"),
    }
    command = [script, "identify", str(corrupt)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"facelock: error: {corrupt}: data is not a decodable image"]


# --- what a new user trips over (issue 11) ---------------------------------------------------------

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def console(
    tmp_path: Path, data_dir: Path, *argv: str, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    script = facelock_script()
    env = {**os.environ, "FACELOCK_DATA_DIR": str(data_dir), "FACELOCK_OPTIONS_FILE": str(tmp_path / "none")}
    return subprocess.run(
        [script, *argv], check=False, capture_output=True, text=True, env=env, timeout=180, preexec_fn=preexec
    )


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [(["--door", "Front Door"], "--door: String should match pattern"), (["--door", "front", "--fps", "0"], "--fps")],
    ids=["door-name", "fps-zero"],
)
def test_replay_bad_door_or_fps_is_one_line(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path, flags: list[str], fragment: str
) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert_one_line_error(*run(capsys, "replay", str(tmp_path / "clip.mp4"), *flags), "replay: ", fragment)


@pytest.mark.parametrize(
    ("content", "reason"), [(b"", "the file is empty"), (b"not a video\n", "not a video")], ids=["empty", "text"]
)
def test_replay_of_an_unreadable_file_exits_2_with_the_reason(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path, content: bytes, reason: str
) -> None:
    clip = tmp_path / "door.mp4"
    clip.write_bytes(content)
    assert_one_line_error(*run(capsys, "replay", str(clip), "--door", "front"), "no frame could be read", reason)


@pytest.mark.parametrize(
    ("content", "kind"), [("[1, 2]", "an array"), ('"cameras"', "a string"), ("{bad", "not valid JSON")]
)
def test_options_file_that_is_not_an_object_is_one_line(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    content: str, kind: str,
) -> None:  # fmt: skip
    options = tmp_path / "options.json"
    options.write_text(content)
    monkeypatch.setenv("FACELOCK_OPTIONS_FILE", str(options))
    assert_one_line_error(*run(capsys, "people"), f"options file {options}", kind)


def test_eval_folder_without_two_identities_is_one_line(
    capsys: pytest.CaptureFixture[str], data_dir: Path, deepface: Path, tmp_path: Path
) -> None:
    one = tmp_path / "one"
    (one / "alice").mkdir(parents=True)
    for file in ALICE:
        shutil.copy(deepface / file, one / "alice")
    assert_one_line_error(*run(capsys, "eval", "folder", "--data", str(one)), "only 1 identity")
    assert_one_line_error(*run(capsys, "calibrate", "--data", str(one)), "only 1 identity")
    singles = tmp_path / "singles"
    for name, file in (("alice", ALICE[0]), ("bob", BOB[0])):
        (singles / name).mkdir(parents=True)
        shutil.copy(deepface / file, singles / name)
    assert_one_line_error(*run(capsys, "eval", "folder", "--data", str(singles)), "no identity has two images")


def test_a_report_that_cannot_be_written_is_one_line(
    capsys: pytest.CaptureFixture[str], data_dir: Path, deepface: Path, tmp_path: Path
) -> None:
    data = tmp_path / "faces"
    for name, files in {"alice": ALICE, "bob": BOB}.items():
        (data / name).mkdir(parents=True)
        for file in files:
            shutil.copy(deepface / file, data / name)
    report = tmp_path / "no-such-folder" / "report.json"
    code, _, err = run(capsys, "eval", "folder", "--data", str(data), "--json", str(report))
    assert code == 2 and err.strip().splitlines() == [f"facelock: error: {report}: No such file or directory"]


def test_first_start_on_a_full_disk_is_one_line(tmp_path: Path, small_disk) -> None:
    folder = small_disk("4m")  # the 40 MB bundle cannot be written (a real ENOSPC)
    done = console(tmp_path, folder / "facelock", "run")
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if not LOG_LINE.match(line)]
    assert len(errors) == 1 and errors[0].startswith("facelock: error: "), done.stderr
    assert "No space left on device" in errors[0]
    assert "free some space" in errors[0]


def test_every_option_and_command_has_help() -> None:
    missing = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    missing.extend([f"{path} {name}"] if not helps.get(name) else [])
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(parser(), "facelock")
    assert missing == []


def test_opencv_and_ffmpeg_warnings_go_through_logging(tmp_path: Path, data_dir: Path) -> None:
    """A broken file makes FFmpeg complain on stderr ('moov atom not found'); the user sees only
    FaceLock's own log lines, which name the camera, and the one-line error."""
    clip = tmp_path / "door.mp4"
    clip.write_text("not a video\n")
    done = console(tmp_path, data_dir, "replay", str(clip), "--door", "front")
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert [line for line in lines if not LOG_LINE.match(line)] == [lines[-1]], done.stderr
    assert any("camera front: cannot open" in line for line in lines), done.stderr
