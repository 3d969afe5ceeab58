"""The presentation-attack sweep on one real NUAA person: the tool behind the rates in
docs/SECURITY.md gives a print attack no unlock and a genuine visit an unlock."""

from __future__ import annotations

from pathlib import Path

from facelock_mqtt.tools import presentation_sweep as sweep


def test_one_person_print_never_unlocks_and_the_visit_does(shared_data: Path, liveness_models: Path, tmp_path: Path):
    people = sweep.nuaa_people(shared_data / "nuaa")
    assert len(people) == 8 and all(len(kinds["print"]) > 0 for kinds in people.values())
    # s0002 has one live session, with a bystander in some frames: the split and the frame choice both matter.
    result = sweep.sweep_person("s0002", people["s0002"], liveness_models, tmp_path)
    assert result["split"].startswith("one session")
    assert result["print"]["unlocks"] == 0 and result["print"]["decisions"], result["print"]
    assert {d[0] for d in result["print"]["decisions"]} <= {"spoof_suspected", "denied"}
    assert result["genuine"]["unlocks"] == 1, result["genuine"]
    assert sweep.summarise({"s0002": result})["print_attacks_that_unlocked"] == 0
