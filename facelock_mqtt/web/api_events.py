"""Events: the decision timeline from the audit trail, its snapshots, and the owner's feedback.

"That was not me" on a recognised event: audited, sent to Home Assistant (event type
`reported_not_me` on the door's event entity), and the person's templates that match the
snapshot are marked for review (all of them when there is no snapshot), so the owner can remove
them. "That was me" on a denied event: the snapshot's face is offered for that person only if it
passes quality, liveness (when installed) and the check that it matches nobody else.
"""

from __future__ import annotations

import cv2
import numpy as np
from aiohttp import web

from ..errors import EnrollmentError, FaceLockError
from ..guards.audit import AuditRecord, list_records
from ..pipeline.imageio import decode_image, encode_jpeg
from .api_people import crop_data_url
from .common import context, error, int_param, read_json, visitor
from .context import PanelContext

OUTCOMES = ("recognized", "denied", "spoof_suspected")
FEEDBACK = "feedback"
MAX_LIMIT = 500
FIELDS = ("score", "threshold", "far_target", "frames_used", "latency_ms", "reason", "liveness", "scores", "reasons")


def event_json(ctx: PanelContext, record: AuditRecord, feedback: list[dict]) -> dict:
    details = record.details
    has_snapshot = ctx.snapshots is not None and ctx.snapshots.jpeg(record.seq) is not None
    return {
        "id": record.seq,
        "ts": record.ts,
        "door": record.camera,
        "person": record.person,
        "outcome": record.event_type,
        **{key: details.get(key) for key in FIELDS},
        "snapshot": f"api/events/{record.seq}/snapshot.jpg" if has_snapshot else None,
        "feedback": feedback,
    }


def query_events(
    ctx: PanelContext, limit: int, door: str | None, person: str | None, outcome: str | None
) -> list[dict]:
    records = list_records(ctx.audit.path, camera=door, person=person, event_type=outcome)
    decisions = [r for r in records if r.event_type in OUTCOMES][-limit:]
    feedback: dict[int, list[dict]] = {}
    for r in list_records(ctx.audit.path, event_type=FEEDBACK):
        feedback.setdefault(r.details.get("event"), []).append(
            {"kind": r.details.get("kind"), "ts": r.ts, "actor": r.details.get("actor")}
        )
    return [event_json(ctx, r, feedback.get(r.seq, [])) for r in reversed(decisions)]


async def list_events(request: web.Request) -> web.Response:
    ctx, query = context(request), request.query
    limit = int_param(query.get("limit", "50"), "limit")
    if not 1 <= limit <= MAX_LIMIT:
        return error(400, f"limit must be 1 to {MAX_LIMIT}")
    outcome = query.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        return error(400, f"outcome must be one of {', '.join(OUTCOMES)}")
    events = await ctx.run(query_events, ctx, limit, query.get("door") or None, query.get("person") or None, outcome)
    return web.json_response({"events": events})


def find_record(ctx: PanelContext, seq: int) -> AuditRecord | None:
    return next((r for r in list_records(ctx.audit.path) if r.seq == seq and r.event_type in OUTCOMES), None)


def snapshot_image(ctx: PanelContext, seq: int) -> np.ndarray | None:
    data = ctx.snapshots.jpeg(seq) if ctx.snapshots is not None else None
    return None if data is None else decode_image(data)


def drawn_snapshot(ctx: PanelContext, seq: int) -> bytes | None:
    image = snapshot_image(ctx, seq)
    if image is None:
        return None
    box = ctx.snapshots.box(seq) if ctx.snapshots is not None else None
    if box and len(box) == 4:
        x, y, w, h = (int(v) for v in box)
        cv2.rectangle(image, (x, y), (x + w, y + h), (0, 200, 255), 2)
    return encode_jpeg(image)


async def snapshot(request: web.Request) -> web.Response:
    ctx = context(request)
    jpeg = await ctx.run(drawn_snapshot, ctx, int_param(request.match_info["id"], "an event id"))
    if jpeg is None:
        return error(404, "no snapshot kept for this event")
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def not_me(ctx: PanelContext, record: AuditRecord, actor: str) -> tuple[int, dict]:
    if record.event_type != "recognized" or record.person is None:
        return 409, {"error": "only a recognised event can be reported as not me"}
    templates = ctx.recognizer.editor.template_infos(record.person)
    marked = matching_templates(ctx, record) if templates else []
    if not marked:
        marked = [t.id for t in templates]  # no snapshot to tell which: every template is suspect
    ctx.recognizer.editor.mark_review(marked, f"reported not me on event {record.seq}")
    ctx.audit.append(
        FEEDBACK, camera=record.camera, person=record.person,
        details={"kind": "not_me", "event": record.seq, "actor": actor, "templates": marked},
    )  # fmt: skip
    if ctx.notify is not None and record.camera in ctx.locks:
        ctx.notify(record.camera, {
            "event_type": "reported_not_me", "camera": record.camera, "reported_person": record.person,
            "reported_event": record.seq, "actor": actor,
        })  # fmt: skip
    return 200, {"marked": marked, "person": record.person, "offer": "remove the marked templates on the People page"}


def matching_templates(ctx: PanelContext, record: AuditRecord) -> list[int]:
    """The person's templates the snapshot's face matches above the threshold in force."""
    image = snapshot_image(ctx, record.seq)
    if image is None:
        return []
    found = ctx.recognizer.engine.analyze(image, embed_poor=True)
    if found is None or found.embedding is None:
        return []
    threshold = ctx.recognizer.matcher.threshold.threshold
    vectors = ctx.recognizer.editor.template_vectors(record.person, ctx.recognizer.fingerprint)
    return [sid for sid, vector in vectors if float(vector @ found.embedding) > threshold]


def was_me(ctx: PanelContext, record: AuditRecord, person: str, add: bool, actor: str) -> tuple[int, dict]:
    if record.event_type != "denied":
        return 409, {"error": "only a denied event can be claimed (a spoof-suspected one never)"}
    if not any(p.name == person for p in ctx.recognizer.gallery.people()):
        return 404, {"error": f"nobody called {person!r} is enrolled"}
    image = snapshot_image(ctx, record.seq)
    if image is None:
        return 409, {"error": "no snapshot was kept for this event"}
    source = f"event {record.seq}"
    verdict = ctx.recognizer.photo_verdicts(person, [(source, image)])[0]
    body = {
        "person": person,
        "crop": crop_data_url(verdict.crop),
        "reason": verdict.refused,
        "liveness": "not installed",
    }
    if verdict.refused is None and ctx.liveness is not None:
        found = ctx.recognizer.engine.analyze(image)
        live = ctx.liveness.assess([(image, found.face)]) if found is not None else None
        body["liveness"] = "live" if live is not None and live.live else "spoof suspected"
        if live is None or not live.live:
            verdict_reason = "liveness: " + ("; ".join(live.reasons) if live is not None else "no face")
            body["reason"] = verdict_reason
    if body["reason"] is not None:
        return 422, {**body, "error": f"this frame cannot be added: {body['reason']}", "added": 0}
    if not add:
        return 200, {**body, "added": 0}
    try:
        added = ctx.recognizer.enroll(person, [(source, image)], actor=actor)
    except EnrollmentError as exc:
        return 422, {**body, "error": str(exc), "added": 0}
    ctx.audit.append(
        FEEDBACK, camera=record.camera, person=person, details={"kind": "was_me", "event": record.seq, "actor": actor}
    )
    return 200, {**body, "added": added}


def feedback(ctx: PanelContext, seq: int, body: dict, actor: str) -> tuple[int, dict]:
    record = find_record(ctx, seq)
    if record is None:
        return 404, {"error": f"no decision {seq} in the audit trail"}
    kind = body.get("kind")
    if kind == "not_me":
        return not_me(ctx, record, actor)
    if kind == "was_me":
        person = body.get("person")
        if not isinstance(person, str) or not person.strip():
            return 400, {"error": 'say who it was: {"kind": "was_me", "person": NAME}'}
        return was_me(ctx, record, person.strip(), body.get("add") is True, actor)
    return 400, {"error": "kind must be not_me or was_me"}


async def post_feedback(request: web.Request) -> web.Response:
    ctx = context(request)
    seq = int_param(request.match_info["id"], "an event id")
    body = await read_json(request)
    try:
        status, answer = await ctx.run(feedback, ctx, seq, body, visitor(request).actor)
    except FaceLockError as exc:
        return error(409, str(exc))
    return web.json_response(answer, status=status)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/events", list_events)
    router.add_get("/api/events/{id}/snapshot.jpg", snapshot)
    router.add_post("/api/events/{id}/feedback", post_feedback)
