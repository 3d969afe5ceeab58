"""`facelock bench --sections doors` (tools/bench_doors.py): the many-doors section runs the real
service as a child with 1 and 2 cameras, real clips, Mosquitto and a separate subscriber, and
reports every figure. No timing assertions: what must hold whatever the machine's speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facelock_mqtt.cli import main
from facelock_mqtt.settings import DecisionSettings
from facelock_mqtt.tools.bench_doors import LEAD_S, SETTLE_S, DoorsPlan, compare
from facelock_mqtt.tools.bench_report import headline

COOLDOWN_S = 2.0  # what the doors section sets


@pytest.fixture(scope="module")
def doors(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[dict, str]:
    home, out = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("bench")
    args = ["--data-dir", str(home), "--log-level", "warning", "bench", "--smoke", "--sections", "doors"]
    args += ["--doors-cameras", "1,2", "--data", str(shared_data), "--json", str(out / "b.json")]
    assert main([*args, "--markdown", str(out / "b.md")]) == 0
    text = (out / "b.md").read_text()
    print(text)
    return json.loads((out / "b.json").read_text()), text


def test_every_run_unlocks_every_visit_at_every_visited_door(doors):
    report, _ = doors
    section = report["sections"]["doors"]
    assert [(r["cameras"], r["batching"]) for r in section["runs"]] == [(1, True), (2, True), (2, False)]
    for run in section["runs"]:
        assert run["visited_doors"] == min(2, run["cameras"])
        assert run["unlocked"] == run["expected"] == run["visited_doors"] * section["plan"]["visits"], run
        assert run["failed"] == 0 and run["errors"] == 0
        assert 0 < run["unlock_ms"]["p50"] <= run["unlock_ms"]["p95"] <= run["unlock_ms"]["max"]
        assert run["idle_frames_past_gate"] == 0  # the quiet window is quiet: the gate held every frame
        assert run["idle_cpu_percent"] > 0 and run["visit_cpu_percent"] > 0
        assert run["frames"] > 0


def test_batching_is_on_only_where_asked_and_counts_its_runs(doors):
    report, _ = doors
    for run in report["sections"]["doors"]["runs"]:
        runs = run["embedding_runs"]
        if not run["batching"]:
            assert runs is None and run["max_batch"] == 1
            continue
        # k matching frames per unlock at least, each embedded; never more faces than runs x max_batch
        assert runs["faces"] >= DecisionSettings().k * run["unlocked"]
        assert 1 <= runs["runs"] <= runs["faces"] <= runs["runs"] * run["max_batch"]
        assert sum(int(size) * count for size, count in runs["sizes"].items()) == runs["faces"]


def test_every_doors_figure_is_in_the_headline_and_printed(doors):
    report, text = doors
    rows = [row for row in headline(report) if row[0].startswith("many doors") or "same instant" in row[0]]
    assert len(rows) == 2 + 3 * 2 + 2 + 3  # idle per camera count, visit CPU and p95 per run, 2 ratios, at once
    assert len([row for row in headline(report) if "same instant" in row[0]]) == 3
    assert not [label for label, value, _, _ in rows if value is None]
    for label, *_ in rows:
        assert label in text
    assert "### doors" in text
    ratio = report["sections"]["doors"]["comparisons"][0]
    assert ratio["cameras"] == 2 and ratio["p95_off_over_on"] > 0 and ratio["visit_cpu_off_over_on"] > 0


def test_faces_handed_over_together_each_get_a_vector_in_both_modes(doors):
    report, _ = doors
    (once,) = report["sections"]["doors"]["at_once"]
    assert once["faces"] == 2 and once["on"]["max_batch"] > 1 and once["off"]["max_batch"] == 1
    for mode in ("on", "off"):
        assert 0 < once[mode]["face_ms"]["p50"] <= once[mode]["last_face_ms"]["p95"]
        assert once[mode]["cpu_ms_per_face"] > 0
    # every face of every trial (untimed ones too) embedded; shared runs can only lower the count
    trials = once["repeats"] + 2
    assert once["on"]["embedded"] == 2 * trials and trials <= once["on"]["runs"] <= 2 * trials
    assert once["off"]["runs"] is None


def test_the_timeline_keeps_visits_apart_and_the_quiet_window_quiet():
    plan = DoorsPlan()
    starts = plan.visit_starts()
    assert len(starts) == plan.visits + 1 and starts[0] == LEAD_S  # the warm-up visit first
    assert plan.quiet_start >= LEAD_S + plan.stay_s + SETTLE_S  # the gate forgets the warm-up visitor first
    assert starts[1] >= plan.quiet_start + plan.quiet_s + plan.gap_s
    assert all(b - a == pytest.approx(plan.stay_s + plan.gap_s) for a, b in zip(starts[1:], starts[2:]))
    assert plan.gap_s > COOLDOWN_S  # each visit starts a fresh attempt
    assert plan.seconds > starts[-1] + plan.stay_s


def test_ratios_pair_runs_of_the_same_camera_count():
    def run(cameras: int, batching: bool, p95: float, cpu: float) -> dict:
        return {"cameras": cameras, "batching": batching, "unlock_ms": {"p95": p95}, "visit_cpu_percent": cpu}

    runs = [run(1, True, 100.0, 10.0), run(4, True, 200.0, 40.0), run(4, False, 300.0, 50.0)]
    assert compare(runs) == [{"cameras": 4, "p95_off_over_on": 1.5, "visit_cpu_off_over_on": 1.25}]


@pytest.mark.parametrize("counts", ["0", "1,x", ""])
def test_bad_camera_counts_are_refused_with_one_line(counts, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--data-dir", str(tmp_path), "bench", "--sections", "doors", "--doors-cameras", counts])
    assert exit_.value.code == 2
    assert "camera counts are whole numbers" in capsys.readouterr().err
