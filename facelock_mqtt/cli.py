"""The `facelock` command line.

Every command that reports takes `--json`. Bad arguments, missing files and unreadable images
end with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .errors import FaceLockError
from .guards.audit import AUDIT_FILE, AuditLog
from .models.bundle import load_bundle, with_calibration
from .pipeline.imageio import read_image
from .recognizer import Recognizer, resolve_bundle
from .service_cli import add_commands as add_service_commands
from .settings import Settings, load_settings
from .storage.files import secure_dir
from .tools.evaluate import calibrate, eval_folder, eval_lfw

EXIT_USAGE = 2
JSON_HELP = "print the result as JSON"
COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], Any]] = {}


def command(name: str) -> Callable:
    def register(handler: Callable) -> Callable:
        COMMANDS[name] = handler
        return handler

    return register


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def recognizer(settings: Settings, accept_gallery: bool = False) -> Recognizer:
    data_dir = secure_dir(settings.data_dir)
    audit = AuditLog(data_dir / AUDIT_FILE, settings.audit)
    return Recognizer(
        data_dir, settings.model, settings.quality, settings.match, audit=audit, accept_gallery=accept_gallery
    )


@command("enroll")
def _enroll(args: argparse.Namespace, settings: Settings) -> None:
    images = [(str(path), read_image(path)) for path in args.images]
    added = recognizer(settings).enroll(args.name, images, force=args.force)
    emit(args, {"person": args.name, "added": added}, f"enrolled {args.name}: {added} image(s)")


@command("people")
def _people(args: argparse.Namespace, settings: Settings) -> None:
    rec = recognizer(settings, accept_gallery=args.accept_gallery)
    if args.remove:
        if not rec.remove(args.remove):
            raise FaceLockError(f"no enrolled person named {args.remove!r}")
        emit(args, {"removed": args.remove}, f"removed {args.remove}")
        return
    people = [{"name": p.name, "samples": p.samples, "created": p.created} for p in rec.gallery.people()]
    emit(args, people, "\n".join(f"{p['name']}\t{p['samples']} sample(s)" for p in people) or "nobody enrolled")


@command("verify")
def _verify(args: argparse.Namespace, settings: Settings) -> None:
    rec = recognizer(settings)
    score, threshold = rec.verify(read_image(args.image_a), read_image(args.image_b))
    same = score > threshold
    data = {"score": score, "threshold": threshold, "target_far": settings.match.target_far, "same_person": same}
    emit(args, data, f"{'same person' if same else 'different people'} (score {score:.3f}, threshold {threshold:.3f})")


@command("identify")
def _identify(args: argparse.Namespace, settings: Settings) -> None:
    found = recognizer(settings).identify(read_image(args.image))
    data: dict[str, Any] = {"reason": found.reason, "accepted": bool(found.match and found.match.accepted)}
    if found.result is not None:
        data["faces"] = found.result.n_faces
        data["quality"] = {"ok": found.result.quality.ok, "reasons": list(found.result.quality.reasons)}
    if found.match is not None:
        data.update(found.match.as_dict())
    who = data.get("person") if data["accepted"] else "nobody"
    emit(args, data, f"{who} ({found.reason})")


def _engine(settings: Settings):
    from .pipeline.engine import FaceEngine

    return FaceEngine(resolve_bundle(settings.model, settings.data_dir), settings.model, settings.quality)


@command("eval")
def _eval(args: argparse.Namespace, settings: Settings) -> None:
    engine = _engine(settings)
    if args.protocol == "lfw":
        pairs = args.pairs or args.data / "pairs.txt"
        if not pairs.is_file():
            raise FaceLockError(f"pairs file {pairs} not found")
        report = eval_lfw(engine, args.data, pairs)
        text = f"LFW 10-fold accuracy {100 * report['accuracy']:.2f} % ± {100 * report['accuracy_std']:.2f}"
        if report["trained_identities"] is not None:
            text += "\n" + _left_out_line(report)
    else:
        report = eval_folder(engine, args.data)
        text = f"{report['n_images']} images, {report['n_no_face']} without a face; worst slice: {report['worst_slice']}"
    tars = ", ".join(f"TAR@FAR {k}: {100 * v:.2f} %" for k, v in report["tar_at_far"].items())
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{text}\n{tars}")


def _left_out_line(report: dict) -> str:
    """What `eval lfw` left out of a trained bundle's evaluation: it must not count its training people."""
    t = report["trained_identities"]
    empty = f"; no pair left in fold(s) {', '.join(str(f) for f in t['folds_left_out'])}" if t["folds_left_out"] else ""
    return (f"left out {t['pairs_left_out']} pairs and {t['images_left_out']} images of {t['people_in_data']} people "
            f"this bundle trained on ({t['file']}): {report['n_pairs']} pairs in {report['n_folds']} folds remain{empty}")  # fmt: skip


@command("calibrate")
def _calibrate(args: argparse.Namespace, settings: Settings) -> None:
    engine = _engine(settings)
    result = calibrate(engine, args.data, aligned=args.aligned, model_card=args.model_card)
    if args.write_default:
        from .models.default_bundle import SFACE, SOURCE_SHA256

        payload = {"source_sha256": SOURCE_SHA256[SFACE], "calibration": result.model_dump(mode="json")}
        args.write_default.write_text(json.dumps(payload, indent=2) + "\n")
    else:
        with_calibration(load_bundle(engine.bundle.path), result)
    lines = [f"FAR {t.far:g}: threshold {t.threshold:.4f} (TAR {t.tar:.4f}, {t.n_impostor} impostor pairs)" for t in result.thresholds]
    emit(args, result.model_dump(mode="json"), "\n".join(lines))


@command("recalibrate")
def _recalibrate(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 1 when a door's served threshold is refused: its false accepts are above the target."""
    from .tools.recalibrate import format_result, recalibrate

    result = recalibrate(recognizer(settings), settings, args.data, args.cohort, args.door)
    emit(args, result, format_result(result))
    return 1 if any(d["served"] == "refused" for d in result["doors"].values()) else 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (sub-commands inherit the class); `--help` still shows usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="facelock", description="Face-recognition door lock for Home Assistant.")
    top.add_argument("--data-dir", type=Path, help="folder for the gallery and caches (FACELOCK_DATA_DIR)")
    top.add_argument("--bundle", type=Path, help="model bundle or insightface pack folder (default: YuNet + SFace)")
    top.add_argument("--threads", type=int, help="CPU threads per model")
    top.add_argument("--target-far", type=float, help="false-accept rate the threshold is calibrated for")
    top.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity (default: info)")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("enroll", help="enroll a person from one or more photos")
    p.add_argument("name", help="the person's name, as the decisions will show it")
    p.add_argument("images", nargs="+", type=Path, help="photos of that person, one face each")
    p.add_argument(
        "--force", action="store_true",
        help="enroll even photos that match another enrolled person or not this one (recorded in the audit trail)",
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = sub.add_parser("people", help="list enrolled people, or remove one")
    p.add_argument("--remove", metavar="NAME", help="remove this person and all their photos")
    p.add_argument(
        "--accept-gallery", action="store_true", help="vouch for a gallery changed outside FaceLock (e.g. restored)"
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = sub.add_parser("verify", help="are two photos the same person?")
    p.add_argument("image_a", type=Path, help="first photo")
    p.add_argument("image_b", type=Path, help="second photo")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = sub.add_parser("identify", help="who is in this photo?")
    p.add_argument("image", type=Path, help="photo to look for an enrolled person in")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = sub.add_parser("eval", help="accuracy on LFW or on a folder of photos")
    p.add_argument(
        "protocol", choices=["lfw", "folder"], help="lfw: aligned LFW crops and pairs.txt; folder: unaligned photos"
    )
    p.add_argument("--data", type=Path, required=True, help="<identity>/<image> folder")
    p.add_argument("--pairs", type=Path, help="LFW pairs.txt (default: DATA/pairs.txt)")
    p.add_argument("--json", dest="json_out", type=Path, help="write the full report to this file")

    p = sub.add_parser("calibrate", help="thresholds for target FARs from a folder of identities")
    p.add_argument("--data", type=Path, required=True, help="<identity>/<image> folder")
    p.add_argument("--aligned", action="store_true", help="images are already aligned 112x112 crops")
    p.add_argument("--model-card", help="model card the calibration belongs to")
    p.add_argument("--write-default", type=Path, help=argparse.SUPPRESS)  # ships the default calibration
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = sub.add_parser("recalibrate", help="do the served thresholds hold for this camera? (exit 1 when refused)")
    p.add_argument("--data", type=Path, required=True, help="<identity>/<aligned 112x112 face> folder, e.g. LFW aligned")
    p.add_argument("--cohort", type=int, default=2000, help="impostor faces drawn from --data (default 2000)")
    p.add_argument("--door", help="only this door's conditions (default: every door with drift state)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    add_service_commands(sub, command)
    return top


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {"data_dir": args.data_dir, "log_level": args.log_level}
    model = {k: v for k, v in {"bundle": args.bundle, "threads": args.threads}.items() if v is not None}
    if model:
        overrides["model"] = model
    if args.target_far is not None:
        overrides["match"] = {"target_far": args.target_far}
    return load_settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings: Settings | None = None
    try:
        settings = settings_from(args)
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        result = COMMANDS[args.command](args, settings)
    except FaceLockError as exc:
        print(f"facelock: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the machine, not FaceLock: a full disk, a read-only or vanished folder
        print(f"facelock: error: {os_problem(exc, settings.data_dir if settings else args.data_dir)}", file=sys.stderr)
        return EXIT_USAGE
    return int(result or 0)


def os_problem(exc: OSError, data_dir: Path | None) -> str:
    """One line for an operating-system error, with what the user can do about the usual ones."""
    where = f"{exc.filename}: " if exc.filename else ""
    text = f"{where}{exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        folder = data_dir or "the data folder (FACELOCK_DATA_DIR)"
        text += f"; free some space for {folder} (the first start writes about 40 MB of models there)"
    return text


if __name__ == "__main__":
    sys.exit(main())
