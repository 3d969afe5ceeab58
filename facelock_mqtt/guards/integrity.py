"""Gallery integrity: every change FaceLock makes to the gallery is vouched for in the audit trail.

The digest of the gallery's whole content is appended to the hash-chained audit trail after
each enrollment, removal or template recomputation. At start (and whenever the gallery changes
under a running service) the gallery must match the last recorded digest; a gallery edited
behind FaceLock's back (a template slipped in with sqlite3, a restored old copy) is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import GalleryError
from ..storage.gallery import Gallery
from .audit import AuditLog, list_records

GALLERY_EVENT = "gallery_changed"


def record_gallery(
    audit: AuditLog, gallery: Gallery, action: str, person: str | None = None, actor: str | None = None
) -> None:
    """Vouch for the gallery as it is now. `actor`: who made the change (the Home Assistant user
    behind the panel), when known."""
    details = {"action": action, "digest": gallery.content_digest()}
    if actor is not None:
        details["actor"] = actor
    audit.append(GALLERY_EVENT, person=person, details=details)


@contextmanager
def audited_change(audit: AuditLog, gallery: Gallery, action: str, person: str | None = None,
                   actor: str | None = None) -> Iterator[None]:  # fmt: skip
    """A gallery change whose audit record commits with it: the change's transaction writes the
    record to the gallery's journal, and it is moved to the audit trail right after. A crash in
    between leaves it in the journal for `replay_journal` at the next start, so the owner is not
    locked out by a gallery "changed outside FaceLock"."""
    intent = {"action": action, "person": person, "actor": actor}
    with gallery.journaled(intent):
        yield
    flush_journal(audit, gallery)


def flush_journal(audit: AuditLog, gallery: Gallery, replayed: bool = False) -> int:
    """Append the journal's records to the audit trail and forget them; returns how many.

    A record is appended only while it still describes the gallery (its digest is the current
    one) and the trail does not hold it yet; a stale entry is dropped, and `check_gallery` then
    judges the gallery as usual.
    """
    appended = 0
    for entry_id, record in gallery.journal():
        last = list_records(audit.path, event_type=GALLERY_EVENT, limit=1)
        vouched = bool(last) and last[0].details.get("digest") == record["digest"]
        if record["digest"] == gallery.content_digest() and not vouched:
            details = {"action": record["action"], "digest": record["digest"]}
            details.update({"actor": record["actor"]} if record.get("actor") else {})
            details.update({"replayed": True} if replayed else {})
            audit.append(GALLERY_EVENT, person=record.get("person"), details=details)
            appended += 1
        gallery.forget(entry_id)
    return appended


def check_gallery(audit: AuditLog, gallery: Gallery) -> None:
    """Raise GalleryError unless the gallery is exactly as FaceLock last recorded it."""
    last = list_records(audit.path, event_type=GALLERY_EVENT, limit=1)
    digest = gallery.content_digest()
    if not last:
        if gallery.people():
            raise GalleryError(
                f"gallery {gallery.path} holds people but the audit trail vouches for none of it; "
                "refusing to use it (if you restored it yourself: `facelock people --accept-gallery`)"
            )
        return
    if last[-1].details.get("digest") != digest:
        raise GalleryError(
            f"gallery {gallery.path} was changed outside FaceLock since audit record #{last[-1].seq}; "
            "refusing to use it (if you changed it yourself: `facelock people --accept-gallery`)"
        )
