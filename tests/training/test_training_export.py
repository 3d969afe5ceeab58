"""training/: the acceptance gate, ONNX export parity, and the exported bundle served by
facelock_mqtt verifying real photographs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

# First: skips this module cleanly (or fails in CI) when torch is missing, like test_training.
from test_training import CPU, dataset, facelock_data, torch  # noqa: F401 (fixtures)

from facelock_mqtt.models.bundle import file_entry, load_bundle, write_bundle
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.recognizer import Recognizer
from facelock_mqtt.settings import MatchSettings, ModelSettings, QualitySettings
from training.config import ExportConfig, GateConfig, RunConfig
from training.dataset import load_crops, load_manifest, select
from training.errors import GateRefused, ParityError
from training.export import check_parity, export_bundle, export_onnx
from training.gate import calibrate
from training.model import MobileFaceNet, backbone_from_checkpoint
from training.train import fit_arcface

ROOT = Path(__file__).resolve().parents[2]


def _checkpoint(cfg: RunConfig, folder: Path, out: Path, steps: int | None) -> Path:
    """A checkpoint after `steps` training steps (None: a full epoch)."""
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": steps})})
    fit_arcface(cfg, folder, CPU, out)
    return out / "ckpt_last.pt"


@pytest.fixture(scope="module")
def trained(dataset: tuple[RunConfig, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg, folder = dataset
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 3})})
    return _checkpoint(cfg, folder, tmp_path_factory.mktemp("train"), None)


def test_gate_refuses_a_bad_model_and_export_writes_nothing(dataset: tuple[RunConfig, Path], tmp_path: Path) -> None:
    cfg, folder = dataset
    run = tmp_path / "run"
    shutil.copytree(folder, run / "data")
    checkpoint = _checkpoint(cfg, folder, run / "train", steps=1)  # one step: no skill at all
    strict = GateConfig(target_far=1e-2, min_tar=0.9, fars=[1e-2])
    with pytest.raises(GateRefused, match="below the bar"):
        calibrate(load_manifest(folder), folder, checkpoint, strict, run)
    verdict = json.loads((run / "calibration.json").read_text())
    assert verdict["passed"] is False
    # Too few impostor comparisons for the FAR claimed: refused whatever the TAR.
    with pytest.raises(GateRefused, match="rule of three"):
        calibrate(load_manifest(folder), folder, checkpoint, GateConfig(target_far=1e-6, min_tar=0.0), run)
    config = tmp_path / "tiny.json"
    config.write_text(cfg.model_dump_json())
    exported = subprocess.run(
        [sys.executable, "-m", "training", "export", "--config", str(config), "--run-dir", str(run),
         "--checkpoint", str(checkpoint)], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert exported.returncode != 0
    assert "no bundle written" in exported.stderr
    assert not (run / "bundle").exists() and not (run / "bundle.partial").exists()


def test_export_parity_holds_and_catches_a_different_graph(dataset: tuple[RunConfig, Path], trained: Path,
                                                           tmp_path: Path, facelock_data: Path) -> None:  # fmt: skip
    cfg, folder = dataset
    crops = load_crops(folder, select(load_manifest(folder), "test")[:16])
    backbone, _ = backbone_from_checkpoint(trained)
    bundle, worst = export_bundle(backbone, default_bundle(facelock_data), None, crops, cfg.export,
                                  tmp_path / "bundle", "test")  # fmt: skip
    assert worst >= 0.9999
    onnx_file = bundle.file(bundle.manifest.embedder.file)
    assert onnx_file.is_file()
    # An ONNX graph exported from other weights must fail the same check.
    other = MobileFaceNet(backbone_from_checkpoint(trained)[1])
    export_onnx(other, onnx_file, cfg.export.opset)
    files = {**bundle.manifest.files, "embedder": file_entry(bundle.path, onnx_file.name)}
    tampered = write_bundle(bundle.path, bundle.manifest.model_copy(update={"files": files}))
    with pytest.raises(ParityError, match="least cosine"):
        check_parity(backbone, tampered, crops, cfg.export.min_cosine)


def test_exported_bundle_is_served_and_verifies_a_real_pair(dataset: tuple[RunConfig, Path], trained: Path,
                                                            shared_data: Path, tmp_path: Path,
                                                            facelock_data: Path) -> None:  # fmt: skip
    cfg, folder = dataset
    run = tmp_path / "run"
    shutil.copytree(folder, run / "data")
    config = tmp_path / "tiny.json"
    config.write_text(cfg.model_dump_json())
    common = ["--config", str(config), "--run-dir", str(run), "--checkpoint", str(trained),
              "--facelock-data", str(facelock_data)]  # fmt: skip
    for step in ("calibrate", "export"):
        done = subprocess.run([sys.executable, "-m", "training", step, *common], cwd=ROOT, capture_output=True,
                              text=True, timeout=180)  # fmt: skip
        assert done.returncode == 0, done.stderr
    bundle = load_bundle(run / "bundle")
    assert bundle.manifest.calibration is not None and bundle.manifest.embedder.embedding_size == 64
    (tmp_path / "service").mkdir()
    recognizer = Recognizer(tmp_path / "service", ModelSettings(bundle=run / "bundle"), QualitySettings(),
                            MatchSettings(target_far=1e-3))  # fmt: skip
    try:
        # Two webcam captures of one person from one session (NUAA), and another person.
        same_a = read_image(shared_data / "nuaa/live/s0001/0001_00_00_01_0.jpg")
        same_b = read_image(shared_data / "nuaa/live/s0001/0001_00_00_01_43.jpg")
        other = read_image(sorted((shared_data / "nuaa/live/s0002").iterdir())[0])
        genuine, threshold = recognizer.verify(same_a, same_b)
        impostor, _ = recognizer.verify(same_a, other)
    finally:
        recognizer.close()
    assert genuine > threshold
    assert impostor < genuine
    assert np.isfinite([genuine, impostor]).all()


def test_export_takes_torch_export_not_the_deprecated_torchscript_path(trained: Path, tmp_path: Path) -> None:
    """torch 2.9+ deprecates the TorchScript exporter (dynamo=False); the torch.export-based one
    returns the program it exported, and warns of no deprecation on the way."""
    backbone, _ = backbone_from_checkpoint(trained)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        program = export_onnx(backbone, tmp_path / "embedder.onnx", ExportConfig().opset)
    assert isinstance(program, torch.onnx.ONNXProgram)
    graph = onnx.load(tmp_path / "embedder.onnx")
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [ExportConfig().opset]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch stays dynamic
