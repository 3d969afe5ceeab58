"""Embedders: golden embeddings per model, and proof that the golden test catches input mix-ups.

The golden values are the first 8 dimensions of each model's embedding of one fixed LFW aligned
crop, recorded once by running this code. A colour-order or normalisation mistake anywhere
between the JPEG and the ONNX input tensor moves them far beyond the tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facelock_mqtt.errors import BundleError
from facelock_mqtt.models.bundle import Bundle, load_bundle
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.embed import Embedder
from facelock_mqtt.pipeline.imageio import read_image

GOLDEN_IMAGE = ("Abel_Pacheco", 1)
GOLDEN = {
    "sface": [-0.00369, -0.06405, 0.09606, -0.04667, 0.02017, 0.17826, -0.07992, 0.01937],
    "sface_int8": [-0.00711, -0.09002, 0.08765, -0.06159, 0.02369, 0.15872, -0.0687, 0.0308],  # model.int8_embedder
    "pack": [-0.06918, -0.08689, -0.12063, 0.01937, 0.01573, -0.03952, 0.04429, -0.05159],
}
TOLERANCE = 1e-3
# The first pairs of LFW pairs.txt fold 1: genuine (name, i, j) and impostor (name, i, name, j).
GENUINE = [("Abel_Pacheco", 1, 4), ("Akhmed_Zakayev", 1, 3), ("Amber_Tamblyn", 1, 2), ("Anders_Fogh_Rasmussen", 1, 3)]
IMPOSTOR = [
    ("Abdel_Madi_Shabneh", 1, "Dean_Barker", 1),
    ("Abdul_Rahman", 1, "Portia_de_Rossi", 1),
    ("Abel_Pacheco", 1, "Jong_Thae_Hwa", 2),
    ("Abdel_Madi_Shabneh", 1, "Mikhail_Gorbachev", 1),
]
# A plausible wrong normalisation for each model: SFace given insightface's, the pack given none.
WRONG_INPUT = {
    "sface": {"mean": 127.5, "std": 127.5},
    "sface_int8": {"mean": 127.5, "std": 127.5},
    "pack": {"mean": 0.0, "std": 1.0},
}


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, shared_models: Path) -> dict[str, Bundle]:
    data = tmp_path_factory.mktemp("data")
    return {
        "sface": default_bundle(data),
        "sface_int8": default_bundle(data, int8=True),
        "pack": load_bundle(shared_models / "pack_like"),
    }


@pytest.fixture(params=["sface", "sface_int8", "pack"])
def model(request: pytest.FixtureRequest, bundles: dict[str, Bundle]) -> tuple[str, Bundle]:
    return request.param, bundles[request.param]


@pytest.fixture(scope="session")
def lfw(shared_data: Path) -> Path:
    return shared_data / "lfw_aligned_112"


def lfw_image(lfw: Path, name: str, number: int) -> np.ndarray:
    return read_image(lfw / name / f"{name}_{number:04d}.jpg")


def with_input(bundle: Bundle, **changes: float | str) -> Bundle:
    """The same files under a manifest whose embedder input spec is changed."""
    embedder = bundle.manifest.embedder
    spec = embedder.input.model_copy(update=changes)
    manifest = bundle.manifest.model_copy(update={"embedder": embedder.model_copy(update={"input": spec})})
    return Bundle(bundle.path, manifest)


def test_golden_embedding(model: tuple[str, Bundle], lfw: Path) -> None:
    name, bundle = model
    vector = Embedder(bundle, threads=1).embed([lfw_image(lfw, *GOLDEN_IMAGE)])[0]
    np.testing.assert_allclose(vector[:8], GOLDEN[name], atol=TOLERANCE)


def test_golden_does_not_depend_on_thread_count(model: tuple[str, Bundle], lfw: Path) -> None:
    _, bundle = model
    crop = lfw_image(lfw, *GOLDEN_IMAGE)
    one, two = (Embedder(bundle, threads=t).embed([crop])[0] for t in (1, 2))
    np.testing.assert_allclose(one, two, atol=1e-5)


def test_same_person_scores_well_above_different_people(model: tuple[str, Bundle], lfw: Path) -> None:
    _, bundle = model
    embedder = Embedder(bundle, threads=1)

    def score(a: tuple[str, int], b: tuple[str, int]) -> float:
        first, second = embedder.embed([lfw_image(lfw, *a), lfw_image(lfw, *b)])
        return float(first @ second)

    genuine = [score((n, i), (n, j)) for n, i, j in GENUINE]
    impostor = [score((a, i), (b, j)) for a, i, b, j in IMPOSTOR]
    assert min(genuine) > 0.6
    assert max(impostor) < 0.25
    assert min(genuine) - max(impostor) > 0.4


def test_swapped_colour_order_moves_the_golden_values(model: tuple[str, Bundle], lfw: Path) -> None:
    name, bundle = model
    crop = lfw_image(lfw, *GOLDEN_IMAGE)
    swapped = Embedder(bundle, threads=1).embed([np.ascontiguousarray(crop[..., ::-1])])[0]
    assert np.abs(swapped[:8] - GOLDEN[name]).max() > 10 * TOLERANCE
    # The same mistake made in the manifest instead of the pixels.
    flipped = "bgr" if bundle.manifest.embedder.input.color == "rgb" else "rgb"
    via_manifest = Embedder(with_input(bundle, color=flipped), threads=1).embed([crop])[0]
    np.testing.assert_allclose(via_manifest, swapped, atol=1e-5)


def test_wrong_normalisation_moves_the_golden_values(model: tuple[str, Bundle], lfw: Path) -> None:
    name, bundle = model
    wrong = with_input(bundle, **WRONG_INPUT[name])
    vector = Embedder(wrong, threads=1).embed([lfw_image(lfw, *GOLDEN_IMAGE)])[0]
    assert np.abs(vector[:8] - GOLDEN[name]).max() > 10 * TOLERANCE


def test_batches_give_the_same_vectors_as_single_crops(model: tuple[str, Bundle], lfw: Path) -> None:
    """Ten crops cross the batch limit of 8 (SFace) or go one by one (the fixed-batch pack graph)."""
    _, bundle = model
    embedder = Embedder(bundle, threads=1)
    crops = [lfw_image(lfw, n, k) for n, i, j in GENUINE for k in (i, j)] + [lfw_image(lfw, "Dean_Barker", 1)] * 2
    together = embedder.embed(crops)
    apart = np.concatenate([embedder.embed([crop]) for crop in crops])
    assert together.shape == (10, 128)
    np.testing.assert_allclose(together, apart, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_max_batch_follows_the_graph(bundles: dict[str, Bundle]) -> None:
    assert Embedder(bundles["sface"], threads=1, max_batch=8).max_batch == 8  # free batch dimension
    assert Embedder(bundles["pack"], threads=1, max_batch=8).max_batch == 1  # exported with batch 1


def test_no_crops_give_an_empty_matrix(bundles: dict[str, Bundle]) -> None:
    assert Embedder(bundles["sface"], threads=1).embed([]).shape == (0, 128)


def test_manifest_with_wrong_embedding_size_is_refused(bundles: dict[str, Bundle], lfw: Path) -> None:
    bundle = bundles["sface"]
    embedder = bundle.manifest.embedder.model_copy(update={"embedding_size": 512})
    wrong = Bundle(bundle.path, bundle.manifest.model_copy(update={"embedder": embedder}))
    with pytest.raises(BundleError, match="128-d vectors, manifest says 512"):
        Embedder(wrong, threads=1).embed([lfw_image(lfw, *GOLDEN_IMAGE)])
