"""The model card: what a person needs to judge a model, in Markdown (next to its plots when it has them).

One format for every model: a trained checkpoint (`training evaluate`), both sides of `compare`,
and the default bundle's card shipped in the package (`training card-default`). Optional parts
are rendered when the metrics carry them: file digests and the calibration in the model block,
and a "benchmarks" list (e.g. LFW 10-fold accuracy) for numbers measured outside the test split.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .dataset import DatasetManifest


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _data_section(manifest: DatasetManifest) -> list[str]:
    lines = ["## Data", "", "| split | identities | images | sources |", "|---|---|---|---|"]
    for split in ("train", "val", "test"):
        records = [r for r in manifest.records if r.split == split]
        sources = ", ".join(f"{k} {v}" for k, v in sorted(Counter(r.source for r in records).items()))
        lines.append(f"| {split} | {len({r.identity for r in records})} | {len(records)} | {sources} |")
    info = manifest.split
    if info is not None:
        lines += ["", f"Splits are identity-disjoint (seed {info.seed}, ratios {info.ratios}"
                  + (f", all of {', '.join(info.holdout_sources)} held out for test" if info.holdout_sources else "") + ")."]  # fmt: skip
    return lines


def _table_section(m: dict, plots: bool) -> list[str]:
    lines = [
        "## Verification on held-out identities (test split)", "",
        f"{m['test_images']} images of {m['test_identities']} identities: {m['n_genuine']:,} genuine and "
        f"{m['n_impostor']:,} impostor comparisons (all pairs). By the rule of three, zero errors in n comparisons "
        f"bound the rate below 3/n, so this set supports FAR claims down to {m['lowest_supported_far']:.1e} only; "
        "lower FARs are listed but marked unsupported.", "",
        "| FAR | threshold | TAR | supported |", "|---|---|---|---|",
    ]  # fmt: skip
    for row in m["tar_at_far"]:
        lines.append(f"| {row['far']:.0e} | {row['threshold']:.4f} | {_fmt(row['tar'])} | {'yes' if row['supported'] else '**no**'} |")
    if plots:
        lines += ["", "![ROC](roc.png) ![DET](det.png)"]
    return lines


def _benchmarks_section(rows: list[dict]) -> list[str]:
    """Rows of {"benchmark", "dataset", "result"}: numbers from outside the test split."""
    lines = ["## Benchmarks", "", "| benchmark | dataset | result |", "|---|---|---|"]
    return lines + [f"| {r['benchmark']} | {r['dataset']} | {r['result']} |" for r in rows]


def _model_lines(model: dict) -> list[str]:
    config = model.get("config") or {}
    return [
        f"- model: {model['source']}",
        *([f"- model config: {', '.join(f'{k} {v}' for k, v in config.items() if v is not None)}"] if config else []),
        *[f"- SHA-256 of the {name}: `{digest}`" for name, digest in (model.get("sha256") or {}).items()],
        *([f"- calibration: {model['calibration']}"] if model.get("calibration") else []),
    ]  # fmt: skip


def _slices_section(m: dict) -> list[str]:
    lines = [
        "## Error analysis by slice", "",
        f"At the threshold for FAR {m['reference_far']:.1e} ({m['reference_threshold']:.4f}), over the pairs with at "
        "least one image in the slice; the weakest slices first.", "",
        "| slice | value | images | genuine | impostor | TAR | FAR |", "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    rows = sorted(m["slices"], key=lambda r: (r["tar"] is None, r["tar"] if r["tar"] is not None else 0))
    for r in rows:
        lines.append(f"| {r['slice']} | {r['value']} | {r['images']} | {r['genuine']} | {r['impostor']} | "
                     f"{_fmt(r['tar'], 3)} | {_fmt(r['far'], 5)} |")  # fmt: skip
    return lines


def _worst_section(title: str, rows: list[dict], threshold: float, accepted_is_error: bool) -> list[str]:
    lines = [f"### {title}", "", "| score | error at reference threshold | image A | image B | tags |", "|---|---|---|---|---|"]
    for r in rows:
        error = (r["score"] > threshold) == accepted_is_error
        lines.append(f"| {r['score']:.4f} | {'yes' if error else 'no'} | {r['a']} | {r['b']} | {', '.join(r['tags'])} |")
    return lines


def _failing_section(m: dict) -> list[str]:
    rows = m.get("failing_slices", [])
    lines = ["## Failing slices", ""]
    if not rows:
        return lines + ["No slice fails at the reference threshold (TAR within 5 points of overall, FAR within 2x)."]
    return lines + [f"- **{r['slice']}: {r['value']}** — {r['why']}" for r in rows]


def write_model_card(m: dict, manifest: DatasetManifest, path: Path, title: str, plots: bool = True,
                     note: str | None = None) -> None:  # fmt: skip
    """The card of metrics `m` (evaluate.metrics_of, plus an optional "benchmarks" list) at `path`.

    `plots=False` leaves out the ROC/DET image links (a card shipped as text has no images);
    `note` goes under the title (e.g. the command that regenerates the card).
    """
    model = m["model"]
    benchmarks = m.get("benchmarks") or []
    lines = [
        f"# Model card: {title}", "",
        *([note, ""] if note else []),
        f"{model['description']} Intended use: 1:N verification of enrolled residents at a door camera, after "
        "YuNet detection and 5-point alignment to 112x112. Not a liveness check: a photo of an enrolled person "
        "passes verification.", "",
        *_model_lines(model), "",
        *_data_section(manifest), "",
        *_table_section(m, plots), "",
        *([*_benchmarks_section(benchmarks), ""] if benchmarks else []),
        *_slices_section(m), "",
        *_failing_section(m), "",
        "## Worst errors", "",
        *_worst_section("Highest-scoring impostor pairs (false accepts)", m["worst_false_accepts"], m["reference_threshold"], True), "",
        *_worst_section("Lowest-scoring genuine pairs (false rejects)", m["worst_false_rejects"], m["reference_threshold"], False), "",
    ]  # fmt: skip
    path.write_text("\n".join(lines))
