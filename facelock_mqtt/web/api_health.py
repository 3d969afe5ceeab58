"""Model and health: the served bundle's model card and calibration, liveness, the last 24 h of
sensor values and decisions, and the audit trail's verify result."""

from __future__ import annotations

import time

from aiohttp import web

from ..guards.audit import list_records
from ..guards.liveness import liveness_status
from .api_events import OUTCOMES
from .common import context
from .context import PanelContext
from .metrics import HISTORY_S

BUCKET_S = 3600.0
MODEL_CARD = "model_card.md"
MODEL_CARD_LIMIT = 20_000


def model_json(ctx: PanelContext) -> dict:
    manifest = ctx.recognizer.bundle.manifest
    calibration = manifest.calibration
    served = ctx.recognizer.matcher.threshold
    return {
        "name": manifest.name,
        "version": manifest.version,
        "fingerprint": manifest.fingerprint,
        "detector": manifest.detector.kind,
        "embedding_size": manifest.embedder.embedding_size,
        "model_card": calibration.model_card if calibration else None,
        "model_card_text": model_card_text(ctx),
        "calibration": None if calibration is None else {
            "dataset": calibration.dataset,
            "genuine_pairs": calibration.n_genuine,
            "impostor_pairs": calibration.n_impostor,
            "thresholds": [t.model_dump() for t in calibration.thresholds],
        },
        "target_far": ctx.recognizer.match_settings.target_far,
        "served_threshold": served.model_dump(),
        "min_margin": ctx.recognizer.match_settings.min_margin,
        "liveness": liveness_status(ctx.liveness),
    }  # fmt: skip


def model_card_text(ctx: PanelContext) -> str | None:
    """The bundle's model card: the default bundle's ships in the package, `training export` copies
    a trained one's into its bundle; None for a bundle without one (an insightface pack)."""
    path = ctx.recognizer.bundle.path / MODEL_CARD
    try:
        return path.read_text(errors="replace")[:MODEL_CARD_LIMIT] if path.is_file() else None
    except OSError:
        return None


def decisions_by_hour(ctx: PanelContext, now: float) -> dict:
    """{outcome: [count per hour, oldest first]} over the last 24 h."""
    start = now - HISTORY_S
    counts = {outcome: [0] * int(HISTORY_S // BUCKET_S) for outcome in OUTCOMES}
    for record in list_records(ctx.audit.path, since=start):
        if record.event_type in counts:
            bucket = min(int((record.ts - start) // BUCKET_S), len(counts[record.event_type]) - 1)
            counts[record.event_type][bucket] += 1
    return {"start": start, "bucket_s": BUCKET_S, "counts": counts}


def health_json(ctx: PanelContext) -> dict:
    now = time.time()
    report = ctx.audit.verify()
    return {
        "now": now,
        "metrics": ctx.metrics.series(now=now),
        "decisions": decisions_by_hour(ctx, now),
        "audit": {
            "ok": report.ok, "records": report.records, "summary": report.summary(),
            "head": [report.last_seq, report.head_hash],
            "problems": [{"seq": p.seq, "kind": p.kind, "detail": p.detail} for p in report.problems],
        },
    }  # fmt: skip


async def model(request: web.Request) -> web.Response:
    ctx = context(request)
    return web.json_response(await ctx.run(model_json, ctx))


async def health(request: web.Request) -> web.Response:
    ctx = context(request)
    return web.json_response(await ctx.run(health_json, ctx))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/model", model)
    router.add_get("/api/health", health)
