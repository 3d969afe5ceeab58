"""The SFace importer: the PyTorch module computes what onnxruntime computes on real LFW crops,
and it is a backbone the training loop can fine-tune (gradients, freezing, checkpoint round trip)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

try:
    import torch
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("torch is not installed (pip install -e .[training])", allow_module_level=True)

from facelock_mqtt.models.bundle import open_session
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.imageio import read_image
from training.config import ModelConfig
from training.errors import TrainingError
from training.import_sface import SFaceNet, import_sface
from training.model import backbone_from_checkpoint, build, to_tensor


@pytest.fixture(scope="module")
def sface_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return default_bundle(tmp_path_factory.mktemp("facelock")).file("embedder")


@pytest.fixture(scope="module")
def lfw_crops(shared_data: Path) -> np.ndarray:
    folders = sorted((shared_data / "lfw_aligned_112").iterdir())
    files = [f for d in folders[::40] if d.is_dir() for f in sorted(d.iterdir())[:1]][:48]
    return np.stack([read_image(f) for f in files])  # BGR, as the service reads them


def _onnxruntime(path: Path, crops_bgr: np.ndarray) -> np.ndarray:
    session = open_session(path, 1)
    rgb = np.ascontiguousarray(crops_bgr[..., ::-1].transpose(0, 3, 1, 2)).astype(np.float32)  # SFace: 0-255 RGB
    return session.run(None, {session.get_inputs()[0].name: rgb})[0]


def test_imported_sface_matches_onnxruntime_within_1e5_on_lfw_crops(sface_file: Path, lfw_crops: np.ndarray) -> None:
    torch.set_num_threads(1)
    net = import_sface(sface_file)
    with torch.no_grad():
        ours = net(to_tensor(lfw_crops)).numpy()
    reference = _onnxruntime(sface_file, lfw_crops)
    assert ours.shape == reference.shape == (len(lfw_crops), 128)
    assert np.abs(reference).max() > 1.0  # un-normalised outputs: the comparison is not of near-zeros
    assert np.abs(ours - reference).max() <= 1e-5


def test_import_refuses_a_graph_it_does_not_know(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])  # fmt: skip
    onnx.save(helper.make_model(graph), tmp_path / "relu.onnx")
    with pytest.raises(TrainingError, match="unsupported op Relu"):
        import_sface(tmp_path / "relu.onnx")


def test_fine_tunable_freezing_stops_early_gradients_and_checkpoint_rebuilds(sface_file: Path, lfw_crops: np.ndarray,
                                                                            tmp_path: Path) -> None:  # fmt: skip
    torch.set_num_threads(1)
    net = build(ModelConfig(arch="sface", pretrained=sface_file, freeze_convs=3))
    net.train()
    net(to_tensor(lfw_crops[:4])).pow(2).sum().backward()
    convs = [net.layers[i] for i in net.convs()]
    assert all(c.weight.grad is None for c in convs[:3])  # frozen: no gradient computed
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs[3:])
    # A checkpoint stores the spec: the backbone comes back without the ONNX file.
    cfg = ModelConfig(arch="sface", pretrained=tmp_path / "gone.onnx")
    torch.save({"model_config": cfg.model_dump(mode="json"), "backbone": net.state_dict(), "spec": net.spec},
               tmp_path / "ckpt.pt")  # fmt: skip
    rebuilt, _ = backbone_from_checkpoint(tmp_path / "ckpt.pt")
    assert isinstance(rebuilt, SFaceNet)
    with torch.no_grad():
        assert torch.equal(rebuilt(to_tensor(lfw_crops[:2])), net.eval()(to_tensor(lfw_crops[:2])))
