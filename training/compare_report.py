"""The side-by-side report of `compare`: default and candidate in one Markdown file."""

from __future__ import annotations

from pathlib import Path


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _far_table(report: dict) -> list[str]:
    default, candidate = report["models"]
    lines = ["| FAR | supported | default TAR % | candidate TAR % | change (points) |", "|---|---|---|---|---|"]
    for d, c in zip(default["tar_at_far"], candidate["tar_at_far"], strict=True):
        lines.append(f"| {d['far']:.0e} | {'yes' if d['supported'] else '**no**'} | {_pct(d['tar'])} | {_pct(c['tar'])} | "
                     f"{100 * (c['tar'] - d['tar']):+.2f} |")  # fmt: skip
    return lines


def _degraded_table(report: dict) -> list[str]:
    default, candidate = report["models"]
    lines = [
        "| probe condition | genuine | impostor | default TAR % | candidate TAR % | default FAR | candidate FAR |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, d in default["degraded"].items():
        c = candidate["degraded"][name]
        lines.append(f"| {name} | {d['genuine']:,} | {d['impostor']:,} | {_pct(d['tar'])} | {_pct(c['tar'])} | "
                     f"{d['far']:.1e} | {c['far']:.1e} |")  # fmt: skip
    return lines


def _slice_table(report: dict) -> list[str]:
    default, candidate = report["models"]
    lines = [
        "| slice | value | images | genuine | default TAR % | candidate TAR % | default FAR | candidate FAR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(zip(default["slices"], candidate["slices"], strict=True),
                  key=lambda dc: (dc[0]["tar"] is None, dc[0]["tar"] or 0.0))  # fmt: skip
    for d, c in rows:
        far = (lambda r: "n/a" if r["far"] is None else f"{r['far']:.1e}")
        lines.append(f"| {d['slice']} | {d['value']} | {d['images']} | {d['genuine']} | {_pct(d['tar'])} | {_pct(c['tar'])} | "
                     f"{far(d)} | {far(c)} |")  # fmt: skip
    return lines


def _failing(model: dict) -> list[str]:
    rows = model["failing_slices"]
    return [f"- {model['name']}: " + ("; ".join(f"**{r['slice']} {r['value']}** ({r['why']})" for r in rows) or "none")]


def write_report(report: dict, path: Path) -> None:
    default, candidate = report["models"]
    verdict = "**ACCEPTED**" if report["accepted"] else "**REFUSED**"
    lines = [
        "# Default vs candidate on held-out identities", "",
        f"{report['test_images']} test images of {report['test_identities']} identities no model trained on; "
        f"{default['n_genuine']:,} genuine and {default['n_impostor']:,} impostor pairs (all pairs). Each model at its "
        f"own threshold for FAR {report['target_far']:g} on these impostors (default {default['reference_threshold']:.4f}, "
        f"candidate {candidate['reference_threshold']:.4f}).", "",
        f"Verdict: {verdict}. Rule: all-pairs TAR at FAR {report['compare_far']:g} at most "
        f"{100 * report['max_tar_drop']:.1f} points below the default's, and every degraded probe condition improves.", "",
        *([f"- {r}" for r in report["reasons"]] or ["- every condition holds"]), "",
        "## All-pairs TAR at FAR", "", *_far_table(report), "",
        f"## Degraded probes ({report['degraded_images']} crops of identities with two or more images)", "",
        "A clean crop as the enrolment against a degraded crop of the same (genuine) or another (impostor) "
        "identity, at the clean threshold: the conditions the error analysis names.", "",
        *_degraded_table(report), "",
        "## Natural slices (pairs with at least one image in the slice)", "", *_slice_table(report), "",
        "## Failing slices", "", *_failing(default), *_failing(candidate), "",
    ]  # fmt: skip
    path.write_text("\n".join(lines))
