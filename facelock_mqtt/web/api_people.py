"""People: the gallery as the panel shows it, enrollment by upload with a verdict per photo, edits.

Every change goes through the Recognizer (so the audit trail vouches for the gallery and the
running doors match against the new templates at once) and names the visitor as its actor.
"""

from __future__ import annotations

import base64
import re

import cv2
import numpy as np
from aiohttp import web

from ..errors import EnrollmentError, GalleryError
from ..recognizer import PhotoVerdict
from .common import context, error, int_param, read_json, visitor
from .context import PanelContext
from .uploads import Upload, decode_bounded, read_uploads

NAME = re.compile(r"^[\w][\w .'\-]{0,63}$")


def person_name(value: str) -> str:
    name = value.strip()
    if not NAME.fullmatch(name):
        raise web.HTTPBadRequest(text="a name is 1 to 64 letters, digits, spaces, . ' - or _")
    return name


def crop_data_url(crop: np.ndarray | None) -> str | None:
    if crop is None:
        return None
    ok, png = cv2.imencode(".png", crop)
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode() if ok else None


def verdict_json(verdict: PhotoVerdict) -> dict:
    return {
        "photo": verdict.source,
        "ok": verdict.refused is None,
        "reason": verdict.refused,
        "crop": crop_data_url(verdict.crop),
    }


def people_json(ctx: PanelContext) -> dict:
    templates = ctx.recognizer.editor.template_infos()
    people = []
    for person in ctx.recognizer.gallery.people():
        mine = [t for t in templates if t.person == person.name]
        people.append({
            "name": person.name,
            "created": person.created,
            "review": sum(t.review is not None for t in mine),
            "templates": [
                {
                    "id": t.id, "created": t.created, "source": t.source, "models": list(t.models),
                    "review": t.review, "crop": f"api/templates/{t.id}/crop.png",
                }
                for t in mine
            ],
        })  # fmt: skip
    return {"people": people, "model": ctx.recognizer.fingerprint}


async def list_people(request: web.Request) -> web.Response:
    ctx = context(request)
    return web.json_response(await ctx.run(people_json, ctx))


def enroll_checked(ctx: PanelContext, name: str, uploads: list[Upload], actor: str, write: bool) -> tuple[int, dict]:
    """Verdicts for every upload; with `write` and all accepted, the enrollment (all or nothing)."""
    max_pixels = ctx.settings.web.max_upload_pixels
    for upload in uploads:
        decode_bounded(upload, max_pixels)
    readable = [(u.name, u.image) for u in uploads if u.image is not None]
    checked = iter(ctx.recognizer.photo_verdicts(name, readable)) if readable else iter(())
    verdicts = [
        {"photo": u.name, "ok": False, "reason": u.refused, "crop": None}
        if u.image is None
        else verdict_json(next(checked))
        for u in uploads
    ]
    refused = [v for v in verdicts if not v["ok"]]
    if refused:
        reasons = "; ".join(f"{v['photo']}: {v['reason']}" for v in refused)
        return 422, {"error": f"enrollment refused, nothing written: {reasons}", "verdicts": verdicts, "added": 0}
    if not write:
        return 200, {"person": name, "verdicts": verdicts, "added": 0}
    try:
        added = ctx.recognizer.enroll(name, readable, actor=actor)
    except EnrollmentError as exc:  # e.g. refused by a check that runs only at enrollment
        return 422, {"error": str(exc), "verdicts": verdicts, "added": 0}
    return 200, {"person": name, "verdicts": verdicts, "added": added}


async def upload_images(request: web.Request) -> web.Response:
    ctx = context(request)
    name = person_name(request.match_info["name"])
    uploads = await read_uploads(request, ctx.settings.web.max_upload_bytes)
    write = request.query.get("check") not in ("1", "true")
    try:
        status, body = await ctx.run(enroll_checked, ctx, name, uploads, visitor(request).actor, write)
    except GalleryError as exc:
        return error(409, str(exc))
    return web.json_response(body, status=status)


async def remove_person(request: web.Request) -> web.Response:
    ctx = context(request)
    name = request.match_info["name"]
    if not await ctx.run(lambda: ctx.recognizer.remove(name, actor=visitor(request).actor)):
        return error(404, f"nobody called {name!r} is enrolled")
    return web.json_response({"removed": name})


async def rename_person(request: web.Request) -> web.Response:
    ctx = context(request)
    old, new = request.match_info["name"], person_name(str((await read_json(request)).get("name", "")))
    try:
        renamed = await ctx.run(lambda: ctx.recognizer.rename(old, new, actor=visitor(request).actor))
    except GalleryError as exc:
        return error(409, str(exc))
    if not renamed:
        return error(404, f"nobody called {old!r} is enrolled")
    return web.json_response({"renamed": old, "name": new})


async def remove_template(request: web.Request) -> web.Response:
    ctx = context(request)
    sample_id = int_param(request.match_info["id"], "a template id")
    person = await ctx.run(lambda: ctx.recognizer.remove_template(sample_id, actor=visitor(request).actor))
    if person is None:
        return error(404, f"no template {sample_id}")
    return web.json_response({"removed": sample_id, "person": person})


async def clear_review(request: web.Request) -> web.Response:
    ctx = context(request)
    sample_id = int_param(request.match_info["id"], "a template id")
    if not await ctx.run(ctx.recognizer.editor.clear_review, sample_id):
        return error(404, f"template {sample_id} is not marked for review")
    details = {"template": sample_id, "actor": visitor(request).actor}
    await ctx.run(lambda: ctx.audit.append("review_cleared", details=details))
    return web.json_response({"cleared": sample_id})


async def template_crop(request: web.Request) -> web.Response:
    ctx = context(request)
    png = await ctx.run(ctx.recognizer.editor.crop_png, int_param(request.match_info["id"], "a template id"))
    if png is None:
        return error(404, "no such template")
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/people", list_people)
    router.add_post("/api/people/{name}/images", upload_images)
    router.add_delete("/api/people/{name}", remove_person)
    router.add_post("/api/people/{name}/rename", rename_person)
    router.add_delete("/api/templates/{id}", remove_template)
    router.add_delete("/api/templates/{id}/review", clear_review)
    router.add_get("/api/templates/{id}/crop.png", template_crop)
