"""`python -m training <step> --config CONFIG`: one subcommand per step of the cycle.

Every step reads the previous step's artifact from the run folder (default `runs/<name>/`)
and writes its own there:

  ingest     data/crops/, data/dataset.json        split      data/dataset.json (+ split)
  overfit    overfit.json (exit 1 on failure)      train      train/ckpt_{last,best}.pt
  distill    distill/ckpt_*.pt, distill/report.*   sweep      sweep/results.{md,json}
  evaluate   eval/model_card.md, roc.png, det.png  calibrate  calibration.json (exit 1 if gated)
  compare    compare/compare.{md,json}, compare/{default,candidate}/model_card.md (exit 1 unless accepted)
  export     bundle/ (manifest.json + ONNX files; refused unless the gate passed)
  bands      bands.json: quality-band thresholds of the default bundle (--into a calibration JSON)
  card-default  the default bundle's model card (--out; the package ships it as
             facelock_mqtt/models/default_model_card.md)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from facelock_mqtt.errors import FaceLockError
from facelock_mqtt.settings import Settings

from .config import RunConfig, load_config

log = logging.getLogger("training")
FACELOCK_DATA = Settings.model_fields["data_dir"].default


def _engine(args: argparse.Namespace):
    """The serving pipeline's face engine on the default bundle (detection for ingest)."""
    from facelock_mqtt.models.default_bundle import default_bundle
    from facelock_mqtt.pipeline.engine import FaceEngine
    from facelock_mqtt.settings import ModelSettings

    from .ingest import SERVING_QUALITY

    return FaceEngine(default_bundle(args.facelock_data), ModelSettings(), SERVING_QUALITY)


def cmd_ingest(cfg: RunConfig, args: argparse.Namespace) -> int:
    from .ingest import ingest, summary

    needs_detection = any(not s.aligned for s in cfg.ingest.sources)
    manifest = ingest(cfg.ingest, args.run_dir / "data", _engine(args) if needs_detection else None)
    print(summary(manifest, cfg.ingest))
    return 0


def cmd_split(cfg: RunConfig, args: argparse.Namespace) -> int:
    from .dataset import load_manifest, save_manifest
    from .split import check_disjoint, split

    folder = args.run_dir / "data"
    manifest = load_manifest(folder)
    if cfg.split.dedupe_cosine is not None:
        from facelock_mqtt.models.default_bundle import default_bundle
        from facelock_mqtt.pipeline.embed import Embedder

        from .dedupe import dedupe, served_embeddings

        embedder = Embedder(default_bundle(args.facelock_data), threads=cfg.train.threads or 1)
        manifest, found = dedupe(manifest, served_embeddings(embedder, folder, manifest.records), cfg.split.dedupe_cosine)
        print(f"dedupe: {len(found)} cross-source identity pairs merged at cosine >= {cfg.split.dedupe_cosine}")
    manifest = split(manifest, cfg.split)
    check_disjoint(manifest)
    save_manifest(manifest, folder)
    info = manifest.split
    print(f"split (seed {info.seed}, ratios {info.ratios}): identities {info.identities}, images {info.images}")
    return 0


def cmd_overfit(cfg: RunConfig, args: argparse.Namespace) -> int:
    from .dataset import load_manifest
    from .overfit import run_overfit

    folder = args.run_dir / "data"
    result = run_overfit(folder, load_manifest(folder), cfg.model, cfg.head, cfg.train.overfit, cfg.seed,
                         shuffle_labels=args.shuffle_labels)  # fmt: skip
    args.run_dir.mkdir(parents=True, exist_ok=True)
    (args.run_dir / "overfit.json").write_text(json.dumps(result.__dict__ | {"message": result.message}, indent=2))
    print(result.message, file=sys.stdout if result.passed else sys.stderr)
    return 0 if result.passed else 1


def cmd_train(cfg: RunConfig, args: argparse.Namespace) -> int:
    from .train import train

    result = train(cfg, args.run_dir / "data", args.run_dir / "train", args.resume, args.skip_overfit)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one report, not one per process
        print(f"best val TAR@FAR={cfg.train.val_far:g}: {result.best_score:.4f} after {result.epochs_run} epochs"
              f"{' (stopped early)' if result.stopped_early else ''}")  # fmt: skip
    return 0


def cmd_distill(cfg: RunConfig, args: argparse.Namespace) -> int:
    from facelock_mqtt.models.default_bundle import default_bundle

    from .distill import distill, report
    from .distributed import setup, teardown

    teacher, out, threads = default_bundle(args.facelock_data), args.run_dir / "distill", args.threads
    env = setup(cfg.train.threads)
    try:
        checkpoint = distill(cfg, args.run_dir / "data", teacher, env, out, threads)
    finally:
        teardown(env)
    if env.main and cfg.distill.lfw is not None:
        r = report(cfg, checkpoint, teacher, args.run_dir / "data", out, threads)
        print(f"held-out LFW folds {r['heldout_folds']} ({r['pairs']} pairs), ONNX Runtime, {threads} thread(s):")
        for name in ("teacher", "student"):
            print(f"  {name}: accuracy {100 * r[name]['accuracy']:.2f} % +- {100 * r[name]['accuracy_std']:.2f}, "
                  f"{r[name]['ms_per_face']:.2f} ms/face, {r[name]['onnx_mb']:.1f} MB")  # fmt: skip
    return 0


def cmd_sweep(cfg: RunConfig, args: argparse.Namespace) -> int:
    from .distributed import setup
    from .sweep import sweep, table

    rows = sweep(cfg, args.run_dir / "data", setup(cfg.train.threads), args.run_dir / "sweep")
    print(table(rows, cfg.train.val_far))
    print(f"best config: {args.run_dir / 'sweep' / 'best.json'}")
    return 0


def _checkpoint(args: argparse.Namespace) -> Path:
    return args.checkpoint or args.run_dir / "train" / "ckpt_best.pt"


def cmd_evaluate(cfg: RunConfig, args: argparse.Namespace) -> int:
    from .dataset import load_manifest
    from .evaluate import evaluate

    folder = args.run_dir / "data"
    metrics = evaluate(load_manifest(folder), folder, _checkpoint(args), cfg.evaluate, cfg.gate,
                       args.run_dir / "eval", cfg.name)  # fmt: skip
    for row in metrics["tar_at_far"]:
        print(f"TAR@FAR={row['far']:.0e}: {row['tar']:.4f}{'' if row['supported'] else ' (unsupported: too few impostors)'}")
    print(f"model card: {args.run_dir / 'eval' / 'model_card.md'}")
    return 0


def cmd_compare(cfg: RunConfig, args: argparse.Namespace) -> int:
    from facelock_mqtt.models.default_bundle import default_bundle
    from facelock_mqtt.pipeline.embed import Embedder

    from .compare import checkpoint_model, compare, served_model
    from .dataset import load_manifest
    from .evaluate import checkpoint_model_info
    from .model import backbone_from_checkpoint

    folder, checkpoint = args.run_dir / "data", _checkpoint(args)
    bundle = default_bundle(args.facelock_data)
    default_info = {"description": "SFace (OpenCV Zoo 2021dec), as served by default, run by onnxruntime.",
                    "source": f"default bundle `{bundle.manifest.fingerprint}`"}  # fmt: skip
    report = compare(cfg, load_manifest(folder), folder, served_model(Embedder(bundle, threads=cfg.train.threads or 1)),
                     checkpoint_model(checkpoint), args.run_dir / "compare", default_info,
                     checkpoint_model_info(checkpoint, backbone_from_checkpoint(checkpoint)[1]))  # fmt: skip
    print((args.run_dir / "compare" / "compare.md").read_text())
    return 0 if report["accepted"] else 1


def cmd_calibrate(cfg: RunConfig, args: argparse.Namespace) -> int:
    from .dataset import load_manifest
    from .gate import calibrate

    folder = args.run_dir / "data"
    report = calibrate(load_manifest(folder), folder, _checkpoint(args), cfg.gate, args.run_dir)
    print(f"gate passed: test TAR {report.test_tar:.4f} at FAR {cfg.gate.target_far:g} "
          f"(threshold {report.threshold:.4f}, test FAR {report.test_far:.2e})")  # fmt: skip
    return 0


def cmd_bands(cfg: RunConfig, args: argparse.Namespace) -> int:
    """Quality-band thresholds of the default bundle on aligned crops (training/bands.py)."""
    from facelock_mqtt.models.default_bundle import default_bundle
    from facelock_mqtt.pipeline.embed import Embedder
    from facelock_mqtt.pipeline.imageio import read_image
    from facelock_mqtt.tools.evaluate import image_files

    from .bands import band_table, calibrate_bands, write_bands_into

    files = image_files(args.data)[: args.limit]
    embedder = Embedder(default_bundle(args.facelock_data), threads=cfg.train.threads or 2)
    bands = calibrate_bands([read_image(path) for _, path in files], [label for label, _ in files], embedder.embed)
    out = args.out or args.run_dir / "bands.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([band.model_dump(mode="json") for band in bands], indent=2) + "\n")
    print(band_table(bands))
    if args.into is not None:
        write_bands_into(args.into, bands)
        print(f"bands written into the calibration block of {args.into}")
    return 0


def cmd_export(cfg: RunConfig, args: argparse.Namespace) -> int:
    from facelock_mqtt.models.default_bundle import default_bundle

    from .dataset import load_crops, load_manifest, select
    from .export import TRAINED_IDENTITIES, export_bundle, trained_identities
    from .gate import require_passed
    from .model import backbone_from_checkpoint

    checkpoint = _checkpoint(args)
    report = require_passed(args.run_dir, checkpoint)
    folder = args.run_dir / "data"
    manifest = load_manifest(folder)
    crops = load_crops(folder, select(manifest, "test")[: cfg.export.parity_images])
    backbone, _ = backbone_from_checkpoint(checkpoint)
    out = args.out or args.run_dir / "bundle"
    bundle, worst = export_bundle(backbone, default_bundle(args.facelock_data), report.calibration, crops, cfg.export,
                                  out, f"{cfg.name}-{report.checkpoint_sha256[:8]}",
                                  args.run_dir / "eval" / "model_card.md", trained_identities(manifest.records))  # fmt: skip
    print(f"bundle {bundle.manifest.fingerprint} written to {out} (parity: least cosine {worst:.6f}); "
          f"serve it with FACELOCK_MODEL__BUNDLE={out} and re-enroll the gallery")  # fmt: skip
    print(f"NOTE: it trained on the people listed in {out / TRAINED_IDENTITIES}; `facelock eval lfw` on this bundle "
          "leaves their pairs out (and says how many); the held-out test split's model card is the fairer number")  # fmt: skip
    return 0


def cmd_card_default(cfg: RunConfig, args: argparse.Namespace) -> int:
    from facelock_mqtt.models.default_bundle import default_bundle

    from .card_default import card_default, regenerate_command, write_metrics
    from .dataset import load_manifest

    folder, out = args.run_dir / "data", args.out or args.run_dir / "card_default" / "model_card.md"
    note = (f"Generated by `training/` (card_default.py), the same code as a trained model's card; regenerate with "
            f"`python -m training ingest --config {args.config}`, `... split` (same config), then "
            f"`{regenerate_command(args.config, out, args.lfw)}`.")  # fmt: skip
    metrics = card_default(cfg, load_manifest(folder), folder, default_bundle(args.facelock_data), args.lfw, out, note,
                           args.threads)  # fmt: skip
    write_metrics(metrics, args.run_dir / "card_default" / "metrics.json")
    for row in metrics["tar_at_far"]:
        print(f"test split TAR@FAR={row['far']:.0e}: {row['tar']:.4f}{'' if row['supported'] else ' (unsupported)'}")
    for row in metrics.get("benchmarks", []):
        print(f"{row['benchmark']}: {row['result']}")
    print(f"model card: {out}")
    return 0


COMMANDS = {
    "ingest": cmd_ingest,
    "split": cmd_split,
    "overfit": cmd_overfit,
    "train": cmd_train,
    "distill": cmd_distill,
    "sweep": cmd_sweep,
    "evaluate": cmd_evaluate,
    "compare": cmd_compare,
    "calibrate": cmd_calibrate,
    "export": cmd_export,
    "card-default": cmd_card_default,
    "bands": cmd_bands,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        s = sub.add_parser(name)
        s.add_argument("--config", type=Path, required=True, help="training config (JSON or YAML)")
        s.add_argument("--run-dir", type=Path, help="run folder (default runs/<config name>)")
        s.add_argument("--facelock-data", type=Path, default=FACELOCK_DATA, help="where the default bundle is cached")
        if name == "overfit":
            s.add_argument("--shuffle-labels", action="store_true", help="deliberately broken labels: the check must fail")
        if name == "distill":
            s.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for the teacher and the timing")
        if name in ("evaluate", "compare", "calibrate", "export"):
            s.add_argument("--checkpoint", type=Path, help="default: <run>/train/ckpt_best.pt")
        if name == "export":
            s.add_argument("--out", type=Path, help="bundle folder (default <run>/bundle)")
        if name == "card-default":
            s.add_argument("--out", type=Path, help="the card (default <run>/card_default/model_card.md)")
            s.add_argument("--lfw", type=Path, help="lfw_aligned_112 folder with pairs.txt: the benchmarks block")
            s.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
        if name == "bands":
            s.add_argument("--data", type=Path, required=True, help="aligned <identity>/<image> crops (LFW)")
            s.add_argument("--limit", type=int, help="use the first N images only (a smoke run)")
            s.add_argument("--out", type=Path, help="bands JSON (default <run>/bands.json)")
            s.add_argument("--into", type=Path, help="also set the bands key of this calibration JSON")
        if name == "train":
            s.add_argument("--resume", action="store_true", help="continue from train/ckpt_last.pt")
            s.add_argument("--skip-overfit", action="store_true", help="do not run the overfit check first")
    return p


def main(argv: list[str] | None = None) -> int:
    # Before torch loads OpenMP: spinning waits make 2 threads ~6x slower than 1 on a busy CPU.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_config(args.config)
        args.run_dir = args.run_dir or Path("runs") / cfg.name
        if cfg.train.threads:
            import torch

            torch.set_num_threads(cfg.train.threads)
        return COMMANDS[args.command](cfg, args)
    except FaceLockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
