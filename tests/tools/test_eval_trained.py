"""`eval lfw` on a bundle trained by `training/`: every pair with a person it trained on is left
out (trained_identities.json, as training/export.py writes it), and the report says so; a fold
left with no pair is named, and too few folds is refused. A bundle without the file is unchanged.

Real LFW crops and the real default bundle; the "trained" bundle is a copy of it holding a
trained_identities.json (export does not list that file in the manifest either).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from facelock_mqtt.cli import main
from facelock_mqtt.errors import FaceLockError
from facelock_mqtt.models.bundle import Bundle, load_bundle
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.settings import ModelSettings, QualitySettings
from facelock_mqtt.tools.evaluate import TRAINED_IDENTITIES, eval_lfw
from training.export import TRAINED_IDENTITIES as EXPORTED_NAME

TRAINED = "Akhmed_Zakayev"
PEOPLE = {TRAINED: [1, 2, 3], "Amber_Tamblyn": [1, 2], "Abel_Pacheco": [1, 2, 4], "Dean_Barker": [1]}
# 3 folds of 2 genuine + 2 impostor pairs. Fold 1 is all of the trained person; fold 2 has one of theirs.
PAIRS = [
    "3\t2",
    "Amber_Tamblyn\t1\t2", "Abel_Pacheco\t1\t2", "Amber_Tamblyn\t1\tDean_Barker\t1", "Abel_Pacheco\t4\tDean_Barker\t1",
    f"{TRAINED}\t1\t2", f"{TRAINED}\t2\t3", f"{TRAINED}\t1\tAmber_Tamblyn\t2", f"{TRAINED}\t3\tDean_Barker\t1",
    "Abel_Pacheco\t2\t4", "Abel_Pacheco\t1\t4", "Amber_Tamblyn\t2\tAbel_Pacheco\t1", f"Dean_Barker\t1\t{TRAINED}\t3",
]  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return default_bundle(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def lfw(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("lfw")
    for name, numbers in PEOPLE.items():
        (target / name).mkdir()
        for n in numbers:
            shutil.copy(shared_data / "lfw_aligned_112" / name / f"{name}_{n:04d}.jpg", target / name)
    (target / "pairs.txt").write_text("\n".join(PAIRS) + "\n")
    return target


def trained_copy(bundle: Bundle, folder: Path, identities: object) -> Bundle:
    shutil.copytree(bundle.path, folder)
    (folder / TRAINED_IDENTITIES).write_text(identities if isinstance(identities, str) else json.dumps(identities))
    return load_bundle(folder)


def engine(bundle: Bundle) -> FaceEngine:
    return FaceEngine(bundle, ModelSettings(threads=1), QualitySettings())


def test_the_file_name_is_the_one_export_writes() -> None:
    assert TRAINED_IDENTITIES == EXPORTED_NAME


def test_pairs_of_trained_people_are_left_out_and_counted(bundle: Bundle, lfw: Path, tmp_path: Path) -> None:
    plain = eval_lfw(engine(bundle), lfw, lfw / "pairs.txt")
    assert plain["trained_identities"] is None and (plain["n_pairs"], plain["n_folds"], plain["n_images"]) == (12, 3, 9)

    # Source names as export writes them; a name of another source is left out as well.
    trained = trained_copy(bundle, tmp_path / "trained", {"lfw_aligned_112": [TRAINED], "yale": ["subject01"]})
    report = eval_lfw(engine(trained), lfw, lfw / "pairs.txt")
    left = report["trained_identities"]
    assert left == {"file": TRAINED_IDENTITIES, "people": 2, "people_in_data": 1, "pairs_left_out": 5,
                    "images_left_out": 3, "folds_left_out": [1]}  # fmt: skip
    assert (report["n_pairs"], report["n_folds"], report["n_images"]) == (7, 2, 6)
    # All pairs without the trained person's 3 images: Amber 1 + Abel 3 genuine of 6 images, 15 pairs in all.
    assert (report["n_genuine"], report["n_impostor"]) == (4, 11)
    assert (plain["n_genuine"], plain["n_impostor"]) == (7, 29)
    assert 0.0 <= report["accuracy"] <= 1.0


def test_too_few_folds_left_is_refused_plainly(bundle: Bundle, lfw: Path, tmp_path: Path) -> None:
    everyone_else = ["Amber_Tamblyn", "Abel_Pacheco", "Dean_Barker"]  # only fold 1's two Akhmed pairs are left
    trained = trained_copy(bundle, tmp_path / "trained", {"lfw_aligned_112": everyone_else})
    with pytest.raises(FaceLockError, match=r"1 fold\(s\) remain: cross-validation needs 2 or more"):
        eval_lfw(engine(trained), lfw, lfw / "pairs.txt")


@pytest.mark.parametrize("text", ["{not json", '["Akhmed_Zakayev"]', '{"lfw": "Akhmed_Zakayev"}'])
def test_an_unreadable_trained_identities_file_refuses_the_evaluation(bundle: Bundle, lfw: Path, tmp_path: Path,
                                                                      text: str) -> None:  # fmt: skip
    trained = trained_copy(bundle, tmp_path / "trained", text)
    with pytest.raises(FaceLockError, match=TRAINED_IDENTITIES):
        eval_lfw(engine(trained), lfw, lfw / "pairs.txt")


def test_the_cli_says_what_it_left_out(bundle: Bundle, lfw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    trained = trained_copy(bundle, tmp_path / "trained", {"lfw_aligned_112": [TRAINED]})
    monkeypatch.setenv("FACELOCK_DATA_DIR", str(tmp_path / "facelock"))
    monkeypatch.setenv("FACELOCK_OPTIONS_FILE", str(tmp_path / "no-options.json"))
    monkeypatch.setenv("FACELOCK_MODEL__BUNDLE", str(trained.path))
    report_file = tmp_path / "lfw.json"
    assert main(["eval", "lfw", "--data", str(lfw), "--json", str(report_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("LFW 10-fold accuracy ")
    assert lines[1] == ("left out 5 pairs and 3 images of 1 people this bundle trained on (trained_identities.json): "
                        "7 pairs in 2 folds remain; no pair left in fold(s) 1")  # fmt: skip
    assert json.loads(report_file.read_text())["trained_identities"]["pairs_left_out"] == 5
