"""The Events API: the decision timeline from the real audit trail with real snapshots, filters,
"that was not me" (review marks, HA notification, audit) and "that was me" (quality + anti-merge)."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest
from panel_helpers import ingress_panel, make_context, nuaa_photos, panel_settings
from service_helpers import nuaa_frames

from facelock_mqtt.guards.audit import list_records
from facelock_mqtt.pipeline.imageio import read_image


@pytest.fixture
def ctx(tmp_path):
    context = make_context(panel_settings(tmp_path))
    yield context
    context.close()
    context.snapshots.close()
    context.recognizer.close()


def run(coro):
    return asyncio.run(coro)


def decide(ctx, outcome: str, frame, person: str | None, door: str = "front") -> int:
    """A decision as the door records it: the audit record first, then its snapshot."""
    image = read_image(frame)
    found = ctx.recognizer.identify(image)
    score = None if found.match is None else found.match.score
    details = {
        "score": score,
        "threshold": 0.566,
        "far_target": 1e-6,
        "frames_used": 2,
        "latency_ms": 120.0,
        "reason": f"{outcome} for the test",
        "liveness": None,
        "scores": [score],
        "reasons": ["match"],
    }
    record = ctx.audit.append(outcome, camera=door, person=person, details=details)
    ctx.snapshots.save(record.seq, image, found.result.face)
    ctx.snapshots.flush()
    return record.seq


async def enrolled(panel, shared_data, name="s0001", identity="s0001"):
    await panel.page()
    response = await panel.upload(name, nuaa_photos(shared_data, identity, "01"))
    assert response.status == 200, await response.text()


def test_timeline_lists_decisions_newest_first_with_snapshots_and_filters(ctx, shared_data):
    async def go():
        async with ingress_panel(ctx) as panel:
            await enrolled(panel, shared_data)
            first = decide(ctx, "recognized", nuaa_frames(shared_data, "s0001", "02")[0], "s0001")
            second = decide(ctx, "denied", nuaa_frames(shared_data, "s0004", "01")[0], None, door="back")
            every = await (await panel.get("/api/events")).json()
            denied = await (await panel.get("/api/events?outcome=denied")).json()
            front = await (await panel.get("/api/events?door=front&person=s0001&limit=5")).json()
            snapshot = await panel.get(f"/api/events/{first}/snapshot.jpg")
            missing = await panel.get("/api/events/999/snapshot.jpg")
            bad = [
                await panel.get(q) for q in ("/api/events?outcome=opened", "/api/events?limit=0", "/api/events?limit=x")
            ]
            return first, second, every, denied, front, snapshot.status, await snapshot.read(), missing.status, bad

    first, second, every, denied, front, status, jpeg, missing, bad = run(go())
    assert [e["id"] for e in every["events"]] == [second, first]  # gallery changes are not decisions
    assert [e["id"] for e in denied["events"]] == [second]
    assert [e["id"] for e in front["events"]] == [first]
    event = front["events"][0]
    assert event["outcome"] == "recognized" and event["person"] == "s0001" and event["score"] > 0.566
    assert (
        event["frames_used"] == 2
        and event["latency_ms"] == 120.0
        and event["snapshot"] == f"api/events/{first}/snapshot.jpg"
    )
    assert status == 200 and cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
    assert missing == 404 and [r.status for r in bad] == [400, 400, 400]


def test_that_was_not_me_marks_templates_notifies_and_audits(ctx, shared_data):
    async def go():
        async with ingress_panel(ctx) as panel:
            await enrolled(panel, shared_data)
            seq = decide(ctx, "recognized", nuaa_frames(shared_data, "s0001", "02")[0], "s0001")
            denied = decide(ctx, "denied", nuaa_frames(shared_data, "s0004", "01")[0], None)
            wrong_kind = await panel.post(f"/api/events/{denied}/feedback", json={"kind": "not_me"})
            forged = await panel.post(f"/api/events/{seq}/feedback", json={"kind": "not_me"}, csrf=False)
            response = await panel.post(f"/api/events/{seq}/feedback", json={"kind": "not_me"})
            people = await (await panel.get("/api/people")).json()
            events = await (await panel.get("/api/events")).json()
            kept = people["people"][0]["templates"][0]["id"]
            keep = [(await panel.delete(f"/api/templates/{kept}/review")).status for _ in range(2)]
            return seq, wrong_kind.status, forged.status, response.status, await response.json(), people, events, keep

    seq, wrong_kind, forged, status, body, people, events, keep = run(go())
    assert keep == [200, 404]  # "keep": the mark goes, once
    assert (wrong_kind, forged, status) == (409, 403, 200)
    templates = people["people"][0]["templates"]
    assert body["marked"] and set(body["marked"]) <= {t["id"] for t in templates}
    assert all((t["review"] is not None) == (t["id"] in body["marked"]) for t in templates)
    assert people["people"][0]["review"] == len(body["marked"])
    ((door, sent),) = ctx.notified
    assert door == "front" and sent["event_type"] == "reported_not_me" and sent["reported_event"] == seq
    assert (
        list_records(ctx.audit.path, event_type="review_cleared")[0].details["template"]
        == people["people"][0]["templates"][0]["id"]
    )
    (feedback,) = list_records(ctx.audit.path, event_type="feedback")
    assert feedback.details["kind"] == "not_me" and "Alice Owner" in feedback.details["actor"]
    assert next(e for e in events["events"] if e["id"] == seq)["feedback"][0]["kind"] == "not_me"


def test_that_was_me_adds_the_frame_only_when_it_is_that_person(ctx, shared_data):
    async def go():
        async with ingress_panel(ctx) as panel:
            await enrolled(panel, shared_data)
            own = decide(ctx, "denied", nuaa_frames(shared_data, "s0001", "02")[3], None)
            stranger = decide(ctx, "denied", nuaa_frames(shared_data, "s0004", "01")[0], None)
            offer = await panel.post(f"/api/events/{own}/feedback", json={"kind": "was_me", "person": "s0001"})
            added = await panel.post(
                f"/api/events/{own}/feedback", json={"kind": "was_me", "person": "s0001", "add": True}
            )
            refused = await panel.post(
                f"/api/events/{stranger}/feedback", json={"kind": "was_me", "person": "s0001", "add": True}
            )
            nobody = await panel.post(f"/api/events/{own}/feedback", json={"kind": "was_me", "person": "zed"})
            return [(r.status, await r.json()) for r in (offer, added, refused, nobody)]

    before = 3
    (offer_status, offer), (added_status, added), (refused_status, refused), (nobody_status, _) = run(go())
    assert offer_status == 200 and offer["added"] == 0 and offer["crop"].startswith("data:image/png")
    assert added_status == 200 and added["added"] == 1
    assert refused_status == 422 and "does not match s0001" in refused["error"]
    assert nobody_status == 404
    assert [(p.name, p.samples) for p in ctx.recognizer.gallery.people()] == [("s0001", before + 1)]
