"""`facelock liveness install`: the MiniFASNet ONNX graph built from the state dicts without
PyTorch, its scores against the PyTorch export on real NUAA and pad frames, strict loading, and
bad inputs refused in one line with nothing written."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from service_helpers import need_torch

from facelock_mqtt.cli import main as facelock
from facelock_mqtt.errors import BundleError
from facelock_mqtt.guards import liveness
from facelock_mqtt.guards.liveness_install import convert, install
from facelock_mqtt.models import minifasnet
from facelock_mqtt.models.checkpoint import load_state_dict
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.pipeline.quality import frontal_rank
from facelock_mqtt.settings import ModelSettings, QualitySettings

ROOT = Path(__file__).resolve().parents[2]
V2_SPEC, V1SE_SPEC = liveness.MODELS


@pytest.fixture(scope="module")
def weights(shared_models: Path) -> Path:
    return shared_models / "minifasnet"


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# --- without PyTorch ---------------------------------------------------------------------------

NO_TORCH = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # `import torch` now fails, as on a machine without it
    try:
        import torch
    except ImportError:
        pass
    else:
        sys.exit("torch is still importable")
    from facelock_mqtt.cli import main
    code = main(sys.argv[1:])
    assert sys.modules["torch"] is None and not [m for m in sys.modules if m.startswith("torch.")]
    sys.exit(code)
""")


def test_install_runs_where_torch_cannot_be_imported(weights: Path, liveness_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "liveness"
    args = ["--data-dir", str(tmp_path / "data"), "liveness", "install", "--weights", str(weights), "--out", str(out)]
    done = subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "FACELOCK_LOG_LEVEL": "info"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"liveness models installed: {out / liveness.MANIFEST}" in done.stdout
    model = liveness.LivenessModel.from_dir(out, threads=1)  # digests and calibrated weights check out
    assert model.status.startswith("on: MiniFASNetV2@2.7 + MiniFASNetV1SE@4")
    # The conversion is deterministic: the same bytes as the fixture's install, run here.
    assert folder_digest(out) == folder_digest(liveness_models)


# --- the same scores as the PyTorch export, on real frames -------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> FaceEngine:
    bundle = default_bundle(tmp_path_factory.mktemp("data"))
    return FaceEngine(bundle, ModelSettings(threads=1), QualitySettings())


def real_frames(shared_data: Path) -> list[Path]:
    """20 live and 20 printed-photo NUAA frames spread over every session, and the 3 pad samples."""
    with open(shared_data / "nuaa" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked = []
    for live in (True, False):
        group = [r for r in rows if (r["label"] == "live") == live]
        picked += [shared_data / "nuaa" / group[i]["path"] for i in np.linspace(0, len(group) - 1, 20).astype(int)]
    pad = sorted((shared_data / "pad_samples").rglob("*.jpg"))
    assert len(pad) == 3
    return picked + pad


def live_probabilities(model: liveness.LivenessModel, crops: dict[str, np.ndarray]) -> np.ndarray:
    """(models, frames) softmax live probabilities, each model run once on a batch of all crops."""
    rows = [liveness.softmax(session.run(None, {"input": crops[spec.name]})[0])[:, liveness.LIVE_CLASS]
            for spec, session in model.sessions]  # fmt: skip
    return np.stack(rows)


def test_scores_match_the_pytorch_export_on_real_frames(
    weights: Path, liveness_models: Path, engine: FaceEngine, shared_data: Path, tmp_path: Path
) -> None:
    reference_dir = tmp_path / "torch_export"
    need_torch().export_all(weights, reference_dir)
    ours = liveness.LivenessModel.from_dir(liveness_models, threads=1)
    reference = liveness.LivenessModel.from_dir(reference_dir, threads=1)
    crops: dict[str, list[np.ndarray]] = {spec.name: [] for spec in liveness.MODELS}
    for path in real_frames(shared_data):
        image = read_image(path)  # applies the pad samples' EXIF rotation
        faces = engine.faces(image)
        assert faces, f"no face in {path.name}"
        box = max(faces, key=frontal_rank).box
        for spec in liveness.MODELS:
            crops[spec.name].append(liveness.crop_face(image, box, spec.scale).transpose(2, 0, 1))
    batches = {name: np.stack(c).astype(np.float32) for name, c in crops.items()}
    got, expected = live_probabilities(ours, batches), live_probabilities(reference, batches)
    diff = float(np.abs(got - expected).max())
    fused = float(np.abs(got.mean(axis=0) - expected.mean(axis=0)).max())
    print(f"\n{got.shape[1]} real frames x 2 models: max |live prob ours - torch export| = {diff:.2e}"
          f" (fused CNN score {fused:.2e}); scores {expected.min():.3f}..{expected.max():.3f}")  # fmt: skip
    assert diff <= 1e-4
    assert expected.min() < 0.1 and expected.max() > 0.9  # live and spoof frames both in the sample


# --- strict loading ----------------------------------------------------------------------------


def test_a_state_dict_must_match_its_variant_exactly(weights: Path) -> None:
    v2 = load_state_dict(weights / V2_SPEC.weights_file)
    assert minifasnet.build_onnx(v2, minifasnet.V2).graph.output[0].name == "logits"
    with pytest.raises(BundleError, match="V1SE|expected|missing"):  # the variants' widths differ
        minifasnet.build_onnx(v2, minifasnet.V1SE)
    extra = {**v2, "module.extra.weight": np.zeros(3, np.float32)}
    with pytest.raises(BundleError, match="unexpected weights module.extra.weight|unexpected weights extra"):
        minifasnet.build_onnx(extra, minifasnet.V2)
    missing = {k: v for k, v in v2.items() if k != "module.prob.weight"}
    with pytest.raises(BundleError, match="missing weight prob.weight"):
        minifasnet.build_onnx(missing, minifasnet.V2)
    as_ints = {**v2, "module.prob.weight": v2["module.prob.weight"].astype(np.int64)}
    with pytest.raises(BundleError, match="prob.weight is int64"):
        minifasnet.build_onnx(as_ints, minifasnet.V2)


def test_convert_refuses_what_is_not_its_checkpoint(weights: Path, tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with pytest.raises(BundleError, match="not a readable PyTorch checkpoint"):
        convert(b"not a checkpoint", V2_SPEC, target)
    with pytest.raises(BundleError, match="missing weight|expected"):
        convert((weights / V2_SPEC.weights_file).read_bytes(), V1SE_SPEC, target)
    assert not target.exists()


# --- the command: bad input changes nothing ----------------------------------------------------


def run_install(tmp_path: Path, weights: Path, out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = facelock(["--data-dir", str(tmp_path / "data"), "liveness", "install", "--weights", str(weights),
                     "--out", str(out)])  # fmt: skip
    return code, capsys.readouterr().err.strip()


def test_bad_weights_are_refused_in_one_line_and_nothing_is_written(
    weights: Path, liveness_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(weights, tampered)
    target = tampered / V1SE_SPEC.weights_file
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    shutil.copy(weights / V2_SPEC.weights_file, incomplete)
    cases = {"SHA-256": tampered, "cannot read": incomplete, "not a folder": tmp_path / "nowhere"}

    installed = tmp_path / "installed"
    shutil.copytree(liveness_models, installed)
    before = folder_digest(installed)
    for message, source in cases.items():
        for out in (tmp_path / "fresh", installed):
            code, err = run_install(tmp_path, source, out, capsys)
            assert code == 2 and message in err and "\n" not in err and err.startswith("facelock: error:"), err
            assert not (tmp_path / "fresh").exists()
            assert folder_digest(installed) == before
    # No staging folders left behind next to the target.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incomplete", "installed", "tampered"]


def test_reinstall_replaces_the_models_and_keeps_other_files(
    weights: Path, liveness_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "liveness"
    shutil.copytree(liveness_models, out)
    (out / liveness.MANIFEST).write_text("{}")  # a broken earlier install
    (out / "notes.txt").write_text("mine")
    assert run_install(tmp_path, weights, out, capsys)[0] == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert {k: v for k, v in folder_digest(out).items() if k != "notes.txt"} == folder_digest(liveness_models)
    liveness.LivenessModel.from_dir(out)
    # `download --if-missing` (scripts/run.sh at every start) leaves an installed folder alone, offline.
    args = ["--data-dir", str(tmp_path / "data"), "liveness", "download", "--if-missing", "--out", str(out)]
    assert facelock(args) == 0 and "already installed" in capsys.readouterr().out
    assert not (tmp_path / "data" / "liveness-weights").exists()


def test_download_then_install(
    weights: Path, web_root: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, url = web_root
    for spec in liveness.MODELS:
        shutil.copy(weights / spec.weights_file, root / spec.weights_file)

    def download(dest: str, out: str) -> int:
        return facelock(["--data-dir", str(tmp_path / "data"), "liveness", "download", "--base-url", url,
                         "--dest", str(tmp_path / dest), "--out", str(tmp_path / out)])  # fmt: skip

    assert download("weights", "liveness") == 0
    assert f"installed: {tmp_path / 'liveness' / liveness.MANIFEST}" in capsys.readouterr().out
    liveness.LivenessModel.from_dir(tmp_path / "liveness")
    # A server handing out other bytes: refused in one line before anything is installed.
    (root / V2_SPEC.weights_file).write_bytes(b"not the weights")
    assert download("other", "other_liveness") == 2
    # (the web server logs its requests to stderr too: only FaceLock's lines are checked)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("facelock")]
    assert len(errors) == 1 and "SHA-256" in errors[0] and errors[0].startswith("facelock: error:"), errors
    assert not (tmp_path / "other_liveness").exists()
    with pytest.raises(BundleError, match="not a folder"):
        install(tmp_path / "nowhere", tmp_path / "x")
