"""Quality bands in the calibration: they only ever tighten the global threshold, an unsupported
band falls back to what it measured, unknown quality gets the strictest, old manifests load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from facelock_mqtt.models.bundle import Bundle, Calibration, Manifest, QualityBand, Threshold, band_threshold
from facelock_mqtt.models.default_bundle import default_bundle

GLOBAL = 0.56
N = 50_000_000  # supports FAR 1e-6 by the rule of three


def band(name: str, at_1e6: float, n: int = N, top: float = 0.9, **bounds) -> QualityBand:
    thresholds = (
        Threshold(far=1e-4, threshold=at_1e6 - 0.1, n_impostor=n), Threshold(far=1e-6, threshold=at_1e6, n_impostor=n)
    )
    return QualityBand(name=name, n_genuine=10, n_impostor=n, max_impostor_score=top, thresholds=thresholds, **bounds)


def thresholds_of(*bands: QualityBand, target_far: float = 1e-6):
    calibration = Calibration(
        dataset="test", n_genuine=10, n_impostor=N, bands=bands,
        thresholds=(Threshold(far=1e-6, threshold=GLOBAL, n_impostor=N),),
    )  # fmt: skip
    manifest = Manifest.model_validate(
        {**json.loads(MANIFEST_JSON), "calibration": calibration.model_dump(mode="json")}
    )
    return Bundle(Path("/nonexistent"), manifest).band_thresholds(target_far)


MANIFEST_JSON = json.dumps({
    "name": "t", "version": "1",
    "files": {"d": {"path": "d.onnx", "sha256": "0" * 64}, "e": {"path": "e.onnx", "sha256": "0" * 64}},
    "detector": {"kind": "yunet", "file": "d", "input": {"color": "bgr"}},
    "embedder": {"file": "e", "input": {"color": "rgb"}, "embedding_size": 128},
})  # fmt: skip


def test_a_band_above_the_global_threshold_raises_the_bar_for_its_probes_only() -> None:
    bands = thresholds_of(band("small", 0.70, max_face_px=60.0), band("large", 0.58, min_face_px=60.0))
    assert bands.for_probe(40.0, 100.0) == ("small", 0.70)
    assert bands.for_probe(120.0, 100.0) == ("large", 0.58)


def test_a_band_below_the_global_threshold_never_lowers_it() -> None:
    bands = thresholds_of(band("large", 0.40, min_face_px=60.0), band("small", 0.70, max_face_px=60.0))
    assert bands.for_probe(120.0, 100.0) == ("large", GLOBAL)


def test_an_unsupported_band_that_measured_higher_uses_its_highest_impostor_score() -> None:
    few = band("tiny", 0.65, n=1000, top=0.72, max_face_px=40.0)  # 1000 * 1e-6 < 3: not supported
    chosen = band_threshold(few, 1e-6, GLOBAL)
    assert not chosen.supported and chosen.threshold == 0.72


def test_an_unsupported_band_that_measured_lower_keeps_the_global_threshold() -> None:
    few = band("tiny", 0.50, n=1000, top=0.60, max_face_px=40.0)
    chosen = band_threshold(few, 1e-6, GLOBAL)
    assert not chosen.supported and chosen.threshold == GLOBAL


def test_a_target_far_below_every_band_far_is_judged_by_the_highest_impostor_score() -> None:
    # The global calibration refuses a target it cannot support, so call the band rule itself.
    chosen = band_threshold(band("tiny", 0.65, top=0.8), 1e-8, GLOBAL)
    assert not chosen.supported and chosen.threshold == 0.8


def test_unknown_quality_or_a_probe_no_band_covers_gets_the_strictest_threshold() -> None:
    bands = thresholds_of(
        band("tiny", 0.75, min_face_px=24.0, max_face_px=40.0), band("large", 0.60, min_face_px=40.0),
        band("blurred", 0.68, max_blur=60.0),
    )  # fmt: skip
    assert bands.strictest() == ("tiny", 0.75)
    assert bands.for_probe(None, None) == ("tiny", 0.75)
    assert bands.for_probe(20.0, 100.0) == ("tiny", 0.75)  # under every calibrated face size
    assert bands.for_probe(math.nan, 100.0) == ("tiny", 0.75)
    assert bands.for_probe(80.0, 30.0) == ("blurred", 0.68)  # large and blurred: the higher of the two
    assert bands.for_probe(80.0, 200.0) == ("large", 0.60)


def test_without_bands_the_global_threshold_applies_to_every_probe() -> None:
    bands = thresholds_of()
    assert bands.for_probe(30.0, 5.0) == (None, GLOBAL) and bands.strictest() == (None, GLOBAL)


def test_bad_bands_are_refused() -> None:
    with pytest.raises(ValidationError, match="min_face_px"):
        band("x", 0.6, min_face_px=60.0, max_face_px=40.0)
    with pytest.raises(ValidationError, match="unique"):
        thresholds_of(band("x", 0.6), band("x", 0.7))


def test_a_calibration_written_before_bands_still_loads() -> None:
    threshold = {"far": 1e-6, "threshold": 0.5, "n_impostor": N}
    old = {"dataset": "lfw", "n_genuine": 1, "n_impostor": N, "thresholds": [threshold]}
    assert Calibration.model_validate(old).bands == ()


def test_the_default_bundle_carries_the_shipped_bands(tmp_path_factory: pytest.TempPathFactory) -> None:
    bundle = default_bundle(tmp_path_factory.mktemp("data"))
    bands = bundle.band_thresholds(1e-6)
    global_threshold = bundle.threshold_for(1e-6).threshold
    names = [b.name for b in bands.bands]
    assert {"tiny", "large"} <= set(names)
    assert all(b.threshold >= global_threshold for b in bands.bands)
    # Calibrated on all of lfw_aligned_112: every band's impostors support FAR 1e-6 on their own.
    assert all(b.supported for b in bands.bands)
