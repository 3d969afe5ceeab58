"""Identity dedupe across sources: deepface's person01/02/11 are LFW's Angelina Jolie, Jennifer
Aniston and Matt Damon under other names; after dedupe each is one identity in one split, and
strangers are never merged. Real photos, real detection, the served model's embeddings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.embed import Embedder
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.settings import ModelSettings, QualitySettings
from training.config import IngestConfig, SourceConfig, SplitConfig
from training.dedupe import EMBEDDINGS, dedupe, find_duplicates, served_embeddings
from training.ingest import ingest
from training.split import check_disjoint, split

SAME = {"person01": "Angelina_Jolie", "person02": "Jennifer_Aniston", "person11": "Matt_Damon"}
STRANGERS = ("Aaron_Eckhart", "Abdullah_Gul", "Adrien_Brody", "Al_Gore", "Alejandro_Toledo", "Ali_Naimi")


@pytest.fixture(scope="module")
def two_sources(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dedupe")
    deepface, lfw = root / "deepface", root / "lfw"
    for person in (*SAME, "person04"):
        shutil.copytree(shared_data / "deepface" / person, deepface / person)
    for person in (*SAME.values(), *STRANGERS):
        shutil.copytree(shared_data / "lfw_aligned_112" / person, lfw / person)
    cfg = IngestConfig(sources=[SourceConfig(path=lfw, aligned=True), SourceConfig(path=deepface)])
    bundle = default_bundle(root / "facelock")
    manifest = ingest(cfg, root / "data", FaceEngine(bundle, ModelSettings(), QualitySettings()))
    embeddings = served_embeddings(Embedder(bundle, threads=1), root / "data", manifest.records)
    return manifest, embeddings, root / "data"


def test_dedupe_merges_the_same_person_under_two_names_and_no_stranger(two_sources) -> None:
    manifest, embeddings, _ = two_sources
    found = find_duplicates(manifest.records, embeddings, 0.6)
    pairs = {frozenset((d.a, d.b)) for d in found}
    assert pairs == {frozenset((f"deepface/{a}", f"lfw/{b}")) for a, b in SAME.items()}
    merged, _ = dedupe(manifest, embeddings, 0.6)
    identities = {r.identity for r in merged.records}
    counts = {i: sum(r.identity == i for r in manifest.records) for i in {r.identity for r in manifest.records}}
    for deepface_name, lfw_name in SAME.items():
        a, b = f"deepface/{deepface_name}", f"lfw/{lfw_name}"
        keep = a if (-counts[a], a) < (-counts[b], b) else b  # the identity with more images
        gone = b if keep == a else a
        assert gone not in identities and merged.merged[gone] == keep
        originals = [r.original for r in merged.records if r.identity == keep]
        assert any("/deepface/" in o for o in originals) and any("/lfw/" in o for o in originals)
    assert "deepface/person04" in identities and all(f"lfw/{s}" in identities for s in STRANGERS)
    assert len(merged.records) == len(manifest.records)  # merged, never dropped


def test_after_dedupe_one_person_never_lands_in_two_splits(two_sources) -> None:
    manifest, embeddings, _ = two_sources
    merged, _ = dedupe(manifest, embeddings, 0.6)
    for seed in range(5):
        result = split(merged, SplitConfig(seed=seed, ratios=(0.4, 0.3, 0.3)))
        check_disjoint(result)
        for deepface_name, lfw_name in SAME.items():
            names = {f"deepface/{deepface_name}", f"lfw/{lfw_name}"}
            person = [r for r in result.records if Path(r.original).parent.name in (deepface_name, lfw_name)]
            assert {r.identity for r in person} < names and len({r.split for r in person}) == 1


def test_served_embeddings_are_cached_by_the_crop_list(two_sources) -> None:
    manifest, embeddings, folder = two_sources
    assert (folder / EMBEDDINGS).is_file()
    # The cached vectors come back without an embedder (None would fail if it were used).
    assert (served_embeddings(None, folder, manifest.records) == embeddings).all()


def test_ingest_and_embedding_phases_show_progress(shared_data: Path, two_sources, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    from training.dataset import load_crops
    from training.dedupe import embed_with_progress

    lfw = tmp_path / "lfw"
    shutil.copytree(shared_data / "lfw_aligned_112" / STRANGERS[0], lfw / STRANGERS[0])
    ingest(IngestConfig(sources=[SourceConfig(path=lfw, aligned=True)]), tmp_path / "data", None)
    manifest, _, folder = two_sources
    bundle = default_bundle(folder.parent / "facelock")
    crops = load_crops(folder, manifest.records[:10])
    vectors = embed_with_progress(Embedder(bundle, threads=1), crops, "teacher embeddings", chunk=4)
    err = capsys.readouterr().err
    assert "ingest lfw" in err and "teacher embeddings" in err and "3/3" in err
    assert vectors.shape == (10, 128)
