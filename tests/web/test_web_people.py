"""The People API with the real recognizer and real photos: enroll by upload with a verdict per
photo, refusals that write nothing, rename, remove a template or a person, the actor audited."""

from __future__ import annotations

import asyncio
import struct
import zlib

import cv2
import numpy as np
import pytest
from panel_helpers import HA_USER, ingress_panel, jpeg, make_context, nuaa_photos, panel_settings

from facelock_mqtt.guards.audit import list_records


@pytest.fixture
def ctx(tmp_path):
    context = make_context(
        panel_settings(tmp_path, web={"max_upload_bytes": 2_000_000, "max_upload_pixels": 4_000_000})
    )
    yield context
    context.close()
    context.recognizer.close()


def run(coro):
    return asyncio.run(coro)


def gallery_state(ctx) -> tuple:
    return ctx.recognizer.gallery.content_digest(), len(list_records(ctx.audit.path))


def big_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge image (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_enroll_by_upload_lists_the_person_with_crops_and_records_the_ha_user(ctx, shared_data):
    async def go():
        async with ingress_panel(ctx) as panel:
            await panel.page()
            response = await panel.upload("s0001", nuaa_photos(shared_data, "s0001", "01"))
            body = await response.json()
            assert response.status == 200, body
            assert body["added"] == 3 and all(
                v["ok"] and v["crop"].startswith("data:image/png") for v in body["verdicts"]
            )
            people = await (await panel.get("/api/people")).json()
            crop = await panel.get("/" + people["people"][0]["templates"][0]["crop"])
            return people, crop.status, await crop.read()

    people, status, png = run(go())
    (person,) = people["people"]
    assert person["name"] == "s0001" and len(person["templates"]) == 3
    assert all(t["models"] == [ctx.recognizer.fingerprint] for t in person["templates"])
    assert status == 200 and cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape == (112, 112, 3)
    change = list_records(ctx.audit.path, event_type="gallery_changed")[-1]
    assert change.person == "s0001" and "Alice Owner" in change.details["actor"] and "u42" in change.details["actor"]
    # The running matcher sees the new templates at once (no restart).
    assert ctx.recognizer.matcher.names == ["s0001"]


@pytest.mark.parametrize("case", ["not_an_image", "no_face", "two_faces", "too_dark", "too_many_pixels"])
def test_one_bad_photo_refuses_the_upload_with_its_reason_and_writes_nothing(ctx, shared_data, case):
    good = nuaa_photos(shared_data, "s0001", "01", count=2)
    bad = {
        "not_an_image": ("notes.txt", b"this is not a photo"),
        "no_face": ("wall.png", cv2.imencode(".png", np.full((480, 640, 3), 128, np.uint8))[1].tobytes()),
        "two_faces": ("couple.jpg", (shared_data / "deepface" / "scenes" / "couple.jpg").read_bytes()),
        "too_dark": ("dark.jpg", jpeg(shared_data / "nuaa" / "live" / "s0001" / good[0][0], scale=0.3)),
        "too_many_pixels": ("huge.png", big_png_header(20000, 20000)),
    }[case]
    expected = {
        "not_an_image": "not a JPEG or PNG",
        "no_face": "no face",
        "two_faces": "faces found",
        "too_dark": "too dark",
        "too_many_pixels": "too large",
    }[case]
    before = gallery_state(ctx)

    async def go():
        async with ingress_panel(ctx) as panel:
            await panel.page()
            response = await panel.upload("s0001", [*good, bad])
            return response.status, await response.json()

    status, body = run(go())
    assert status == 422, body
    verdicts = {v["photo"]: v for v in body["verdicts"]}
    assert verdicts[bad[0]]["ok"] is False and expected in verdicts[bad[0]]["reason"], verdicts[bad[0]]
    assert all(verdicts[name]["ok"] for name, _ in good)
    assert body["added"] == 0 and gallery_state(ctx) == before


def test_another_persons_face_is_refused(ctx, shared_data):
    async def go():
        async with ingress_panel(ctx) as panel:
            await panel.page()
            assert (await panel.upload("bob", nuaa_photos(shared_data, "s0004", "01"))).status == 200
            before = gallery_state(ctx)
            stranger = nuaa_photos(shared_data, "s0004", "02", count=1)
            response = await panel.upload("s0001", nuaa_photos(shared_data, "s0001", "01", count=2) + stranger)
            return before, response.status, await response.json()

    before, status, body = run(go())
    assert status == 422
    assert "matches another person (bob" in body["verdicts"][-1]["reason"]
    assert gallery_state(ctx) == before and [p.name for p in ctx.recognizer.gallery.people()] == ["bob"]


def test_too_large_an_upload_is_refused_before_it_is_read(ctx, shared_data):
    async def go():
        async with ingress_panel(ctx) as panel:
            await panel.page()
            response = await panel.upload("s0001", [("big.jpg", b"\xff\xd8" + bytes(2_100_000))])
            return response.status, await response.json()

    status, body = run(go())
    assert status == 413 and "error" in body
    assert ctx.recognizer.gallery.people() == []


def test_bad_names_and_forms_are_refused(ctx, shared_data):
    async def go():
        async with ingress_panel(ctx) as panel:
            await panel.page()
            bad_name = await panel.upload("<script>", nuaa_photos(shared_data, "s0001", "01", count=1))
            not_multipart = await panel.post("/api/people/s0001/images", data=b"x")
            return bad_name.status, not_multipart.status

    assert run(go()) == (400, 400)


def test_check_only_gives_verdicts_and_writes_nothing(ctx, shared_data):
    before = gallery_state(ctx)

    async def go():
        async with ingress_panel(ctx) as panel:
            await panel.page()
            response = await panel.upload("s0001", nuaa_photos(shared_data, "s0001", "01", count=2), check=True)
            return response.status, await response.json()

    status, body = run(go())
    assert status == 200 and body["added"] == 0 and all(v["ok"] for v in body["verdicts"])
    assert gallery_state(ctx) == before


def test_rename_remove_template_and_remove_person(ctx, shared_data):
    async def go():
        async with ingress_panel(ctx) as panel:
            await panel.page()
            await panel.upload("s0001", nuaa_photos(shared_data, "s0001", "01"))
            await panel.upload("bob", nuaa_photos(shared_data, "s0004", "01", count=1))
            taken = await panel.post("/api/people/s0001/rename", json={"name": "bob"})
            renamed = await panel.post("/api/people/s0001/rename", json={"name": "Carol"})
            people = (await (await panel.get("/api/people")).json())["people"]
            carol = next(p for p in people if p["name"] == "Carol")
            removed = await panel.delete(f"/api/templates/{carol['templates'][0]['id']}")
            again = await panel.delete(f"/api/templates/{carol['templates'][0]['id']}")
            gone = await panel.delete("/api/people/bob")
            missing = await panel.delete("/api/people/bob")
            return [r.status for r in (taken, renamed, removed, again, gone, missing)]

    assert run(go()) == [409, 200, 200, 404, 200, 404]
    people = ctx.recognizer.gallery.people()
    assert [(p.name, p.samples) for p in people] == [("Carol", 2)]
    assert ctx.recognizer.matcher.names == ["Carol"]
    actions = [r.details["action"] for r in list_records(ctx.audit.path, event_type="gallery_changed")]
    assert any(a.startswith("renamed") for a in actions) and any(a.startswith("removed template") for a in actions)


def test_changes_need_the_csrf_header_and_ingress_needs_the_proxy(ctx, shared_data):
    async def go():
        async with ingress_panel(ctx) as panel:
            await panel.page()
            await panel.upload("s0001", nuaa_photos(shared_data, "s0001", "01", count=1))
            forged = await panel.delete("/api/people/s0001", csrf=False)
            read = await panel.get("/api/people")
            return forged.status, read.status

    async def elsewhere():
        async with ingress_panel(ctx, peer="172.30.32.2") as panel:
            response = await panel.get("/api/people")
            return response.status

    assert run(go()) == (403, 200)
    assert [p.name for p in ctx.recognizer.gallery.people()] == ["s0001"]
    assert run(elsewhere()) == 403  # the test client is not the Supervisor's proxy


def test_page_builds_every_link_from_the_ingress_path(ctx):
    async def go():
        async with ingress_panel(ctx) as panel:
            page = await panel.page()
            script = await panel.get("/static/app.js")
            bad_path = await panel.client.get("/", headers={**HA_USER, "X-Ingress-Path": '/x"><script>'})
            return page, script.status, bad_path.status

    page, script, bad = run(go())
    assert 'src="/api/hassio_ingress/abc123/static/app.js"' in page
    assert 'data-base="/api/hassio_ingress/abc123"' in page
    assert script == 200 and bad == 400
