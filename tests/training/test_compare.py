"""`compare`: the acceptance gate against the default. A short fine-tune of the imported SFace and
the served default, side by side on held-out LFW identities, with both model cards; and the
verdict's rules (TAR drop at the compare FAR, every degraded slice must improve)."""

from __future__ import annotations

import json
from pathlib import Path

# First: skips this module cleanly (or fails in CI) when torch is missing, like test_training.
from test_training import CPU, dataset, facelock_data, torch  # noqa: F401 (fixtures)

from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.embed import Embedder
from training.augment import DEGRADED
from training.compare import checkpoint_model, compare, served_model, verdict
from training.config import RunConfig
from training.dataset import load_manifest
from training.evaluate import checkpoint_model_info
from training.train import fit_arcface


def _row(tar: float) -> dict:
    return {"genuine": 10, "impostor": 100, "tar": tar, "far": 0.0}


def _model(tar_1e6: float, degraded: float, n_impostor: int = 4_000_000) -> dict:
    return {"n_impostor": n_impostor, "tar_at_far": [{"far": 1e-6, "tar": tar_1e6}],
            "degraded": {"clean": _row(0.99), **{name: _row(degraded) for name in DEGRADED}}}  # fmt: skip


def test_verdict_holds_the_tar_drop_and_needs_every_degraded_slice_to_improve(dataset) -> None:
    cfg, _ = dataset
    cfg = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"compare_far": 1e-6, "max_tar_drop": 0.003})})
    default = _model(0.880, 0.50)
    assert verdict(default, _model(0.878, 0.60), cfg) == (True, [])  # 0.2 points lower: within the drop
    accepted, reasons = verdict(default, _model(0.870, 0.60), cfg)  # 1 point lower
    assert not accepted and "more than 0.3 points lower" in reasons[0]
    worse_blur = _model(0.880, 0.60)
    worse_blur["degraded"]["motion blur"] = _row(0.49)
    accepted, reasons = verdict(default, worse_blur, cfg)
    assert not accepted and reasons == [r for r in reasons if "motion blur" in r] and len(reasons) == 1
    accepted, reasons = verdict(default, _model(0.9, 0.6, n_impostor=1_000_000), cfg)  # 1e-6 needs 3 M impostors
    assert not accepted and "rule of three" in reasons[0]


def test_compare_reports_default_and_candidate_side_by_side_with_both_model_cards(dataset, facelock_data: Path,
                                                                                 tmp_path: Path) -> None:  # fmt: skip
    cfg, folder = dataset
    bundle = default_bundle(facelock_data)
    raw = json.loads(cfg.model_dump_json())
    raw["model"] = {"arch": "sface", "pretrained": str(bundle.file("embedder")), "freeze_convs": 24, "freeze_bn": True}
    raw["head"] = {"kind": "cosface", "s": 64, "m": 0.35, "init": "class_mean"}
    raw["train"] |= {"max_steps": 2, "batch_size": 8, "lr": 0.001}
    raw["augment"] = {"low_res": 0.5}
    raw["evaluate"] |= {"max_images": 80}
    run = RunConfig.model_validate(raw)
    fit_arcface(run, folder, CPU, tmp_path / "train")
    checkpoint = tmp_path / "train" / "ckpt_last.pt"
    from training.model import backbone_from_checkpoint

    report = compare(run, load_manifest(folder), folder, served_model(Embedder(bundle, threads=1)),
                     checkpoint_model(checkpoint), tmp_path / "compare", {"description": "SFace.", "source": "default"},
                     checkpoint_model_info(checkpoint, backbone_from_checkpoint(checkpoint)[1]))  # fmt: skip
    default, candidate = report["models"]
    assert default["n_impostor"] == candidate["n_impostor"] > 0  # the same pairs for both
    assert set(default["degraded"]) == {"clean", *DEGRADED}
    # Degrading the probe costs the served model TAR at its own clean threshold (the conditions matter).
    assert min(default["degraded"][n]["tar"] for n in DEGRADED) < default["degraded"]["clean"]["tar"]
    # This tiny test set cannot support FAR 1e-6: the candidate is refused, whatever its scores.
    assert not report["accepted"] and any("rule of three" in r for r in report["reasons"])
    text = (tmp_path / "compare" / "compare.md").read_text()
    assert "REFUSED" in text and "low resolution" in text and "default TAR %" in text
    for name in ("default", "candidate"):
        card = (tmp_path / "compare" / name / "model_card.md").read_text()
        assert "## Failing slices" in card and "| FAR | threshold | TAR | supported |" in card
    assert "imported from ONNX and fine-tuned" in (tmp_path / "compare" / "candidate" / "model_card.md").read_text()
