"""`calibrate`: thresholds from held-out impostor pairs, and the acceptance gate.

Thresholds come from the val split (identities the model never trained on); the gate then
checks them on the test split (yet other identities), so the numbers it accepts cannot leak.
The gate refuses when the TAR at the target FAR is below the bar, when either set has too few
impostor comparisons to support the target FAR (rule of three: n >= 3 / FAR), or when the
threshold lets through more impostors on test than the target FAR (it does not transfer).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from facelock_mqtt.models.bundle import Calibration, Threshold
from facelock_mqtt.models.metrics import all_pairs_scores, supports, threshold_at_far
from facelock_mqtt.models.modelprep import sha256_file

from .config import GateConfig
from .dataset import DatasetManifest, load_crops, select
from .errors import GateRefused
from .model import backbone_from_checkpoint, embed

CALIBRATION = "calibration.json"


class GateReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str
    checkpoint_sha256: str
    target_far: float
    min_tar: float
    threshold: float | None
    val_impostor: int
    test_genuine: int
    test_impostor: int
    test_tar: float | None
    test_far: float | None
    passed: bool
    reasons: list[str]
    calibration: Calibration | None


def _scores(manifest: DatasetManifest, folder: Path, split: str, backbone) -> tuple[np.ndarray, np.ndarray]:
    records = select(manifest, split)
    return all_pairs_scores(embed(backbone, load_crops(folder, records)), [r.identity for r in records])


def calibration_from(genuine: np.ndarray, impostor: np.ndarray, fars: list[float], dataset: str) -> Calibration:
    """A threshold for each FAR the impostor count supports; unsupported FARs are left out."""
    thresholds = []
    for far in sorted(fars, reverse=True):
        if supports(len(impostor), far):
            # float32 cosines of unit vectors can exceed 1 by rounding; the manifest bounds [-1, 1].
            t = float(np.clip(threshold_at_far(impostor, far), -1.0, 1.0))
            tar = float(np.mean(genuine > t)) if len(genuine) else None
            thresholds.append(Threshold(far=far, threshold=t, n_impostor=len(impostor), tar=tar))
    return Calibration(dataset=dataset, n_genuine=len(genuine), n_impostor=len(impostor), thresholds=tuple(thresholds),
                       model_card="model_card.md")  # fmt: skip


def gate_reasons(cfg: GateConfig, val_impostor: int, test_impostor: int, test_tar: float | None,
                 test_far: float | None) -> list[str]:  # fmt: skip
    reasons = []
    for name, n in (("val (calibration)", val_impostor), ("test", test_impostor)):
        if not supports(n, cfg.target_far):
            reasons.append(
                f"the {name} split has {n:,} impostor comparisons; a FAR of {cfg.target_far:g} needs at least "
                f"{int(np.ceil(3 / cfg.target_far)):,} (rule of three): add identities or raise gate.target_far"
            )
    if test_tar is not None and test_tar < cfg.min_tar:
        reasons.append(f"test TAR {test_tar:.4f} at FAR {cfg.target_far:g} is below the bar gate.min_tar = {cfg.min_tar}")
    if test_far is not None and test_far > cfg.max_far_ratio * cfg.target_far:
        reasons.append(f"the calibrated threshold lets through FAR {test_far:.2e} of test impostors, over "
                       f"the target {cfg.target_far:g}" + (f" x {cfg.max_far_ratio:g}" if cfg.max_far_ratio < 1 else "")
                       + ": it does not transfer to new people")  # fmt: skip
    return reasons


def calibrate(manifest: DatasetManifest, folder: Path, checkpoint: Path, cfg: GateConfig, out: Path) -> GateReport:
    """Write `out/calibration.json` (thresholds + gate verdict); raise GateRefused if the gate fails."""
    backbone, _ = backbone_from_checkpoint(checkpoint)
    val_genuine, val_impostor = _scores(manifest, folder, "val", backbone)
    test_genuine, test_impostor = _scores(manifest, folder, "test", backbone)
    calibration = calibration_from(val_genuine, val_impostor, cfg.fars, f"{folder.name}:val")
    threshold = test_tar = test_far = None
    if len(val_impostor) and supports(len(val_impostor), cfg.target_far):
        threshold = threshold_at_far(val_impostor, cfg.target_far)
        test_tar = float(np.mean(test_genuine > threshold)) if len(test_genuine) else None
        test_far = float(np.mean(test_impostor > threshold)) if len(test_impostor) else None
    reasons = gate_reasons(cfg, len(val_impostor), len(test_impostor), test_tar, test_far)
    if test_tar is None and not reasons:
        reasons.append("no genuine test pairs: TAR cannot be measured")
    report = GateReport(
        checkpoint=str(checkpoint), checkpoint_sha256=sha256_file(checkpoint), target_far=cfg.target_far,
        min_tar=cfg.min_tar, threshold=threshold, val_impostor=len(val_impostor), test_genuine=len(test_genuine),
        test_impostor=len(test_impostor), test_tar=test_tar, test_far=test_far, passed=not reasons,
        reasons=reasons, calibration=calibration if calibration.thresholds else None,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / CALIBRATION).write_text(report.model_dump_json(indent=2))
    if reasons:
        raise GateRefused("acceptance gate refused the model: " + "; ".join(reasons))
    return report


def require_passed(run_dir: Path, checkpoint: Path) -> GateReport:
    """The gate's verdict for exactly this checkpoint; GateRefused unless it passed."""
    path = run_dir / CALIBRATION
    if not path.is_file():
        raise GateRefused(f"no {CALIBRATION} in {run_dir}: run `python -m training calibrate` first")
    report = GateReport.model_validate(json.loads(path.read_text()))
    if report.checkpoint_sha256 != sha256_file(checkpoint):
        raise GateRefused(f"{path} was made for another checkpoint than {checkpoint}: calibrate again")
    if not report.passed:
        raise GateRefused("the acceptance gate refused this model; no bundle written: " + "; ".join(report.reasons))
    return report
