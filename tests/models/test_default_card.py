"""The default bundle carries the shipped model card (written by `python -m training
card-default`) as model_card.md, hashed in its manifest like its models: the calibration names it,
a tampered card is refused, and a cached bundle without it or with another card is rebuilt."""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

import pytest

from facelock_mqtt.errors import BundleError
from facelock_mqtt.models.bundle import MANIFEST, Bundle, file_entry, load_bundle, read_manifest, write_manifest
from facelock_mqtt.models.default_bundle import MODEL_CARD, MODEL_CARD_FILE, MODEL_CARD_ROLE, default_bundle

SHIPPED = resources.files("facelock_mqtt.models").joinpath(MODEL_CARD_FILE)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return default_bundle(tmp_path_factory.mktemp("data"))


@pytest.fixture
def data_dir(bundle: Bundle, tmp_path: Path) -> Path:
    """A data folder holding a copy of the built bundle, which a test may alter."""
    shutil.copytree(bundle.path, tmp_path / "data" / "bundles" / bundle.path.name)
    return tmp_path / "data"


def test_the_package_ships_a_generated_text_card() -> None:
    text = SHIPPED.read_text()
    assert text.startswith("# Model card: default bundle")
    assert "python -m training card-default" in text  # how to regenerate it
    assert "| FAR | threshold | TAR | supported |" in text and "## Benchmarks" in text
    assert ".png" not in text  # shipped as text: no plot links


def test_the_built_bundle_holds_the_card_its_manifest_hashes(bundle: Bundle) -> None:
    entry = bundle.manifest.files[MODEL_CARD_ROLE]
    assert entry.path == MODEL_CARD
    assert entry.sha256 == hashlib.sha256(SHIPPED.read_bytes()).hexdigest() == file_entry(bundle.path, MODEL_CARD).sha256
    assert bundle.manifest.calibration.model_card == MODEL_CARD
    # The card describes the graph the bundle serves, by the digest its manifest gives.
    assert bundle.manifest.files[bundle.manifest.embedder.file].sha256 in (bundle.path / MODEL_CARD).read_text()


def test_a_tampered_card_is_refused_and_the_default_is_rebuilt(bundle: Bundle, data_dir: Path) -> None:
    folder = data_dir / "bundles" / bundle.path.name
    card = folder / MODEL_CARD
    card.write_text(card.read_text().replace("TAR", "TAR (better)", 1))
    with pytest.raises(BundleError, match="model_card.md fails its SHA-256 check"):
        load_bundle(folder)
    rebuilt = default_bundle(data_dir)
    assert card.read_bytes() == SHIPPED.read_bytes() and rebuilt.manifest == bundle.manifest


def test_a_cached_bundle_from_before_the_card_is_rebuilt_with_it(bundle: Bundle, data_dir: Path) -> None:
    folder = data_dir / "bundles" / bundle.path.name
    old = read_manifest(folder)
    files = {role: e for role, e in old.files.items() if role != MODEL_CARD_ROLE}
    calibration = old.calibration.model_copy(update={"model_card": "docs/RESULTS.md"})
    write_manifest(folder, old.model_copy(update={"files": files, "calibration": calibration}))
    (folder / MODEL_CARD).unlink()
    assert MODEL_CARD_ROLE not in load_bundle(folder).manifest.files  # a valid bundle, just an old one
    rebuilt = default_bundle(data_dir)
    assert rebuilt.manifest == bundle.manifest and (folder / MODEL_CARD).read_bytes() == SHIPPED.read_bytes()


def test_a_cached_bundle_with_another_card_is_rebuilt(bundle: Bundle, data_dir: Path) -> None:
    """A consistent bundle (card and manifest agree) whose card is not the one this package ships."""
    folder = data_dir / "bundles" / bundle.path.name
    (folder / MODEL_CARD).write_text("# Model card: an older measurement\n")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][MODEL_CARD_ROLE] = file_entry(folder, MODEL_CARD).model_dump()
    (folder / MANIFEST).write_text(json.dumps(manifest))
    load_bundle(folder)  # verifies: only the package's card tells it apart
    rebuilt = default_bundle(data_dir)
    assert rebuilt.manifest == bundle.manifest and (folder / MODEL_CARD).read_bytes() == SHIPPED.read_bytes()
