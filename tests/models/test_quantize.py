"""The int8 SFace graph: built offline from the shipped ranges, the same bytes every time, served
only with its own calibration, and computing nearly what the fp32 graph computes."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from facelock_mqtt.models import default_bundle as default
from facelock_mqtt.models.modelprep import sha256_file
from facelock_mqtt.models.quantize import GRAPH, crop_tensor, quantize_embedder, shipped_ranges
from facelock_mqtt.pipeline.embed import Embedder
from facelock_mqtt.pipeline.imageio import read_image


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    return default.default_bundle(tmp_path_factory.mktemp("home"), int8=True)


def shipped_int8() -> dict:
    return json.loads(resources.files(default.__package__).joinpath(default.INT8_CALIBRATION_FILE).read_text())


def test_by_default_the_fp32_graph_is_served_with_the_fp32_thresholds(tmp_path: Path) -> None:
    plain = default.default_bundle(tmp_path)
    assert plain.manifest.embedder.graph == default.FP32_GRAPH
    assert plain.manifest.files["embedder"] == plain.manifest.files[default.FP32_FILE]
    assert plain.manifest.calibration == default.shipped_calibration(default.FP32_GRAPH)


def test_the_int8_bundle_serves_the_calibrated_int8_graph_with_its_own_thresholds(bundle) -> None:
    manifest = bundle.manifest
    assert manifest.embedder.graph == GRAPH
    assert manifest.files[manifest.embedder.file].sha256 == shipped_int8()["graph_sha256"]
    assert manifest.calibration == default.shipped_calibration(GRAPH)
    fp32 = default.shipped_calibration(default.FP32_GRAPH)
    assert fp32 is not None and manifest.calibration != fp32  # never the fp32 thresholds
    assert manifest.calibration.dataset == "lfw_aligned_112" and manifest.calibration.n_impostor > 29_000_000
    assert bundle.threshold_for(1e-6).threshold == next(
        t.threshold for t in manifest.calibration.thresholds if t.far == 1e-6
    )
    assert shipped_int8()["acceptance"]["accepted"] is True


def test_the_int8_graph_builds_from_the_shipped_ranges_to_the_same_bytes(bundle, tmp_path: Path) -> None:
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    quantize_embedder(bundle.file(default.FP32_FILE), first, shipped_ranges())
    quantize_embedder(bundle.file(default.FP32_FILE), second, shipped_ranges())
    assert sha256_file(first) == sha256_file(second) == shipped_int8()["graph_sha256"]


def test_a_graph_other_than_the_calibrated_one_is_not_served(tmp_path: Path, monkeypatch, caplog) -> None:
    """Another onnxruntime may quantise to other bytes: then fp32 with the fp32 thresholds."""
    monkeypatch.setattr(default, "int8_graph_sha256", lambda: "0" * 64)
    built = default.build_default_bundle(tmp_path / "bundle", int8=True)
    assert built.manifest.embedder.graph == default.FP32_GRAPH
    assert built.manifest.embedder.file == "embedder"
    assert built.manifest.files["embedder"] == built.manifest.files[default.FP32_FILE]
    assert built.manifest.calibration == default.shipped_calibration(default.FP32_GRAPH)
    assert not (tmp_path / "bundle" / "sface_int8.onnx").exists()
    assert "differs from the calibrated one" in caplog.text


def test_quantize_refuses_missing_ranges_and_overwriting_measured_ones(bundle, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        quantize_embedder(bundle.file(default.FP32_FILE), tmp_path / "x.onnx", tmp_path / "none.json")
    existing = tmp_path / "ranges.json"
    existing.write_text("{}")
    with pytest.raises(FileExistsError):
        quantize_embedder(
            bundle.file(default.FP32_FILE), tmp_path / "x.onnx", existing, [np.zeros((112, 112, 3), np.uint8)]
        )


def test_int8_embeddings_keep_the_fp32_scores(bundle, shared_data: Path) -> None:
    crops = [read_image(p) for p in sorted((shared_data / "lfw_aligned_112").glob("*/*.jpg"))[:24]]
    int8 = Embedder(bundle, threads=1).embed(crops)
    fp32_session = bundle.session(default.FP32_FILE, 1)
    name = fp32_session.get_inputs()[0].name
    fp32 = np.concatenate([fp32_session.run(None, {name: crop_tensor(c)})[0] for c in crops])
    fp32 /= np.linalg.norm(fp32, axis=1, keepdims=True)
    agreement = np.sum(int8 * fp32, axis=1)
    # measured on 200 crops: min 0.979, mean 0.991 (min/max activation ranges gave 0.935 and 0.98)
    assert agreement.min() > 0.96 and agreement.mean() > 0.985
    assert np.abs(int8 @ int8.T - fp32 @ fp32.T).max() < 0.1  # pair scores move by little


def test_int8_graph_takes_the_same_input_with_a_free_batch(bundle) -> None:
    session = bundle.session("embedder", 1)
    (data,), (output,) = session.get_inputs(), session.get_outputs()
    assert data.name == "data" and data.shape[1:] == [3, 112, 112] and isinstance(data.shape[0], str)
    assert output.shape[1:] == [128]
    crops = [np.full((112, 112, 3), v, np.uint8) for v in (40, 200)]
    assert Embedder(bundle, threads=1).embed(crops).shape == (2, 128)  # batched, as enrollment runs it


def test_a_cached_fp32_bundle_is_rebuilt_once_int8_is_shipped_but_a_refusal_sticks(tmp_path: Path, monkeypatch) -> None:
    """A bundle built before the int8 calibration shipped must not keep serving fp32; one that
    refused exactly the shipped int8 graph is not rebuilt at every start."""
    monkeypatch.setattr(default, "int8_graph_sha256", lambda: None)  # as before int8 was shipped
    old = default.default_bundle(tmp_path, int8=True)
    assert old.manifest.embedder.graph == default.FP32_GRAPH
    monkeypatch.undo()
    current = default.default_bundle(tmp_path, int8=True)
    assert current.manifest.embedder.graph == GRAPH
    monkeypatch.setattr(default, "int8_graph_sha256", lambda: "1" * 64)  # this machine quantises differently
    refused = default.default_bundle(tmp_path, int8=True)
    assert refused.manifest.embedder.graph == default.FP32_GRAPH
    stamp = (refused.path / "manifest.json").stat().st_mtime_ns
    assert default.default_bundle(tmp_path, int8=True).manifest == refused.manifest
    assert (refused.path / "manifest.json").stat().st_mtime_ns == stamp  # not rebuilt again


def test_the_acceptance_run_gates_the_int8_graph_not_the_fp32_view(bundle, tmp_path: Path) -> None:
    """bench_quantize copies the fp32 view (which serves its FP32_FILE role) to serve the int8
    file: the copy must embed with the int8 graph, or the gate compares fp32 with itself."""
    from facelock_mqtt.tools.bench_quantize import int8_bundle

    fp32 = default.fp32_view(bundle)
    built = int8_bundle(fp32, bundle.file("embedder"), tmp_path / "int8")
    assert built.manifest.embedder.graph == GRAPH
    assert built.manifest.files[built.manifest.embedder.file].sha256 == shipped_int8()["graph_sha256"]
    crop = np.full((112, 112, 3), 120, np.uint8)
    crop[30:80, 20:90] = 60
    served, plain = (Embedder(b, threads=1).embed([crop])[0] for b in (built, fp32))
    assert not np.allclose(served, plain, atol=1e-4)  # a different graph, not the fp32 one again
