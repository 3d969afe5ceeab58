"""The matcher applies the probe's quality-band threshold: real LFW crops, the real SFace model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facelock_mqtt.models.bundle import Bundle, BandThresholds, QualityBand, Threshold, band_threshold
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.embed import Embedder
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.pipeline.match import Matcher
from facelock_mqtt.pipeline.quality import Quality, sharpness
from training.bands import downscale

TARGET_FAR = 1e-6
# Two different people in LFW whose pair scores above the global FAR 1e-6 threshold when the
# probe is a 26 px face (found by scanning a quarter of lfw_aligned_112 with training/bands.py's
# downscale): the kind of low-resolution stranger a band must be able to refuse.
PROBE, TEMPLATE = "John_Barnett/John_Barnett_0001.jpg", "John_Burnett/John_Burnett_0001.jpg"
PROBE_PX = 26.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return default_bundle(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def pair(bundle: Bundle, shared_data: Path):
    lfw = shared_data / "lfw_aligned_112"
    probe_crop = downscale(read_image(lfw / PROBE), PROBE_PX)
    embedder = Embedder(bundle, threads=1)
    probe, template = embedder.embed([probe_crop, read_image(lfw / TEMPLATE)])
    quality = Quality(size_px=PROBE_PX, blur=sharpness(probe_crop), brightness=128.0, yaw=0.0)
    return probe, template, quality


def low_res_band(threshold: float) -> QualityBand:
    n = 50_000_000
    return QualityBand(
        name="tiny", min_face_px=24.0, max_face_px=40.0, n_genuine=1, n_impostor=n, max_impostor_score=threshold,
        thresholds=(Threshold(far=TARGET_FAR, threshold=threshold, n_impostor=n),),
    )  # fmt: skip


def test_a_low_resolution_stranger_the_global_threshold_accepts_is_refused_by_its_band(bundle: Bundle, pair) -> None:
    probe, template, quality = pair
    global_threshold = bundle.threshold_for(TARGET_FAR)
    score = float(probe @ template)
    assert score > global_threshold.threshold  # the premise: the global bar lets this stranger in
    plain = Matcher(template[None], ["burnett"], global_threshold, TARGET_FAR, 0.05)
    assert plain.match(probe, quality).accepted
    band = band_threshold(low_res_band(min(score + 0.05, 1.0)), TARGET_FAR, global_threshold.threshold)
    rest = band_threshold(
        QualityBand(name="rest", min_face_px=40.0, n_genuine=1, n_impostor=50_000_000, max_impostor_score=0.45,
                    thresholds=(Threshold(far=TARGET_FAR, threshold=0.4, n_impostor=50_000_000),)),
        TARGET_FAR, global_threshold.threshold,
    )  # fmt: skip
    banded = Matcher(template[None], ["burnett"], BandThresholds(global_threshold, (band, rest)), TARGET_FAR, 0.05)
    result = banded.match(probe, quality)
    assert not result.accepted and result.threshold == band.threshold
    assert result.as_dict()["band"] == "tiny" and result.as_dict()["person"] is None
    # Large and sharp, the same face is in the other band, whose lower bar never undercuts the global one.
    large = banded.match(probe, Quality(size_px=150.0, blur=300.0, brightness=128.0, yaw=0.0))
    assert large.band == "rest" and large.threshold == global_threshold.threshold and large.accepted


def test_the_default_bundle_matcher_reports_the_band_and_never_goes_below_the_global_bar(bundle: Bundle, pair) -> None:
    probe, template, quality = pair
    thresholds = bundle.band_thresholds(TARGET_FAR)
    matcher = Matcher(np.stack([template, probe]), ["a", "b"], thresholds, TARGET_FAR, 0.05)
    result = matcher.match(probe, quality)
    assert result.band == "tiny" and result.as_dict()["band"] == "tiny"
    assert result.threshold >= thresholds.threshold.threshold


def test_a_probe_of_unknown_quality_meets_the_strictest_band(bundle: Bundle, pair) -> None:
    probe, template, _ = pair
    global_threshold = bundle.threshold_for(TARGET_FAR).threshold
    strict = band_threshold(low_res_band(0.9), TARGET_FAR, global_threshold)
    loose = band_threshold(
        QualityBand(name="large", min_face_px=40.0, n_genuine=1, n_impostor=50_000_000, max_impostor_score=0.5,
                    thresholds=(Threshold(far=TARGET_FAR, threshold=0.5, n_impostor=50_000_000),)),
        TARGET_FAR, global_threshold,
    )  # fmt: skip
    thresholds = BandThresholds(bundle.threshold_for(TARGET_FAR), (loose, strict))
    matcher = Matcher(template[None], ["burnett"], thresholds, TARGET_FAR, 0.0)
    unknown = matcher.match_scores(np.array([float(probe @ template)], np.float32), None)
    assert unknown.band == "tiny" and unknown.threshold == 0.9 and not unknown.accepted
