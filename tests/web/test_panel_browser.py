"""The panel in a real headless Chromium (Debian's `chromium`, driven by Playwright with
`executable_path`, no browser download) behind a stand-in for Home Assistant's ingress proxy, so
every link and asset must carry the /api/hassio_ingress/<token> prefix. With the real Service,
Mosquitto and models: enroll a person by upload and see them listed, replay a clip of them and
see the event with its snapshot, press "that was not me".

FACELOCK_PANEL_SCREENSHOTS=<folder> also writes docs/panel-*.png; face images are then replaced
by a drawn cartoon face, so no real person's photo ends up in the repository.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from conftest import free_port
from ingress_proxy import IngressProxy
from mqtt_client import FakeRelay, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from panel_helpers import HA_USER, INGRESS_PATH, camera, no_liveness, play
from service_helpers import nuaa_frames

from facelock_mqtt.guards.audit import list_records
from facelock_mqtt.service import Service
from facelock_mqtt.settings import load_settings
from facelock_mqtt.web.server import PanelServer, panel_context

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
SCREENSHOTS = os.environ.get("FACELOCK_PANEL_SCREENSHOTS")


def _missing(what: str) -> None:
    message = f"{what} (scripts/test.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    if not CHROMIUM.exists():
        _missing(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def cartoon(width: int, height: int) -> np.ndarray:
    """A drawn face for the documentation screenshots (never a real person's photo)."""
    image = np.full((height, width, 3), (205, 200, 190), np.uint8)
    cx, cy, r = width // 2, height // 2, min(width, height) // 3
    cv2.ellipse(image, (cx, cy), (int(r * 0.8), r), 0, 0, 360, (150, 190, 235), -1)
    for dx in (-r // 3, r // 3):
        cv2.circle(image, (cx + dx, cy - r // 4), max(2, r // 10), (60, 50, 40), -1)
    cv2.ellipse(image, (cx, cy + r // 4), (r // 3, r // 6), 0, 0, 180, (60, 60, 150), max(1, r // 20))
    return image


def hide_faces(page) -> None:
    crop = cv2.imencode(".png", cartoon(112, 112))[1].tobytes()
    frame = cv2.imencode(".jpg", cartoon(640, 480))[1].tobytes()
    page.route("**/crop.png", lambda route: route.fulfill(body=crop, content_type="image/png"))
    page.route("**/snapshot.jpg", lambda route: route.fulfill(body=frame, content_type="image/jpeg"))
    page.route("**/live.mjpg*", lambda route: route.fulfill(body=frame, content_type="image/jpeg"))


def show(page, base: str, name: str) -> None:
    page.goto(f"{base}#{name}")
    page.wait_for_selector(f'main[data-page="{name}"]')


def screenshot(page, name: str) -> None:
    if SCREENSHOTS:
        page.evaluate("document.getElementById('toast').hidden = true")
        page.wait_for_timeout(300)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"panel-{name}.png"), full_page=False)


def loaded(page, selector: str) -> bool:
    """Every image matching `selector` has loaded and has pixels (waits up to 10 s)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # the fixture made sure it is there

    script = (
        "s => { const i = [...document.querySelectorAll(s)];"
        " return i.length > 0 && i.every(x => x.complete && x.naturalWidth > 0); }"
    )
    try:
        page.wait_for_function(script, arg=selector, timeout=10_000)
    except PlaywrightTimeout:
        return False
    return True


@pytest.fixture
def running(tmp_path, mosquitto):
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "client_id": "facelock_browser"},
        lock={"relock_s": 1.0, "unlocking_s": 0.1, "pin": "4711"},
        liveness=no_liveness(tmp_path),
        web={"port": free_port()},
    )
    events: list[dict] = []
    service = Service(
        settings, cameras=[camera()], on_event=events.append, relay_factory=lambda d: FakeRelay(), panel=True
    )
    service.start()
    panel = PanelServer(panel_context(service), ingress=True, allowed_peer="127.0.0.1", port=free_port())
    panel.start()
    proxy = IngressProxy(f"http://127.0.0.1:{panel.port}", INGRESS_PATH, HA_USER, free_port())
    proxy.start()
    try:
        yield service, proxy, events
    finally:
        panel.stop()  # first: it ends the live-view streams the proxy is forwarding
        proxy.stop()
        service.stop()


def test_enroll_replay_and_report_not_me_behind_ingress(browser, running, shared_data, mosquitto):
    service, proxy, events = running
    # A language without a translation falls back to English without a failed request.
    page = browser.new_page(viewport={"width": 1100, "height": 760}, locale="en-US" if SCREENSHOTS else "de-DE")
    failures: list[str] = []
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("pageerror", lambda exc: failures.append(f"script error: {exc}"))
    page.on("dialog", lambda dialog: dialog.accept())
    if SCREENSHOTS:
        hide_faces(page)

    show(page, proxy.url, "people")
    page.fill("input[name=person]", "s0001")
    page.set_input_files("input[type=file]", [str(p) for p in nuaa_frames(shared_data, "s0001", "01")[:3]])
    page.click("form button[type=submit]")
    page.wait_for_selector('[data-person="s0001"] .template img')
    assert page.locator('[data-person="s0001"] .template').count() == 3
    assert loaded(page, '[data-person="s0001"] .template img')

    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="browser-camera")
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()
    try:
        play(publisher, [p.read_bytes() for p in nuaa_frames(shared_data, "s0001", "02")])
        wait_until(lambda: any(e["event_type"] == "recognized" for e in events), 30, f"a recognised event in {events}")
    finally:
        publisher.loop_stop()
    service.snapshots.flush()

    show(page, proxy.url, "events")
    row = page.locator("li.event.recognized").first
    row.wait_for()
    assert "s0001" in row.inner_text()
    assert loaded(page, "li.event.recognized img.snapshot")
    row.locator("button.danger").click()
    page.locator("#toast", has_text="marked for review").wait_for()
    offer = row.locator(".offer figure")  # the marked templates, offered for removal
    assert offer.count() >= 1 and loaded(page, "li.event.recognized .offer img")
    screenshot(page, "events")
    offer.first.locator("button.danger").click()
    offer.first.get_by_text("removed").wait_for()
    (report,) = list_records(service.guards.audit.path, event_type="feedback")
    assert report.details["kind"] == "not_me" and "Alice Owner" in report.details["actor"]

    show(page, proxy.url, "people")
    page.wait_for_selector('[data-person="s0001"] .badge.warn')
    assert page.locator('[data-person="s0001"] .template').count() == 2  # one removed from the event
    screenshot(page, "people")
    show(page, proxy.url, "doors")
    assert page.inner_text('[data-testid="lock-state"]') in ("LOCKED", "UNLOCKED", "UNLOCKING")
    screenshot(page, "doors")
    show(page, proxy.url, "health")
    assert "intact" in page.inner_text('[data-testid="audit"]')
    page.click("details:has(pre.model-card) summary")  # the default bundle's model card, shipped with it
    card = page.inner_text("pre.model-card")
    assert card.startswith("# Model card: default bundle") and "LFW 10-fold accuracy" in card
    screenshot(page, "health")
    page.close()
    time.sleep(0.2)
    assert not failures, failures
    assert proxy.misses == [], proxy.misses  # every request carried the ingress prefix
