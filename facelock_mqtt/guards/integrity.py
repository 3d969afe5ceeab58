"""Gallery integrity: every change FaceLock makes to the gallery is vouched for in the audit trail.

The digest of the gallery's whole content is appended to the hash-chained audit trail after
each enrollment, removal or template recomputation. At start (and whenever the gallery changes
under a running service) the gallery must match the last recorded digest; a gallery edited
behind FaceLock's back (a template slipped in with sqlite3, a restored old copy) is refused.
"""

from __future__ import annotations

from ..errors import GalleryError
from ..storage.gallery import Gallery
from .audit import AuditLog, list_records

GALLERY_EVENT = "gallery_changed"


def record_gallery(
    audit: AuditLog, gallery: Gallery, action: str, person: str | None = None, actor: str | None = None
) -> None:
    """`actor`: who made the change (the Home Assistant user behind the panel), when known."""
    details = {"action": action, "digest": gallery.content_digest()}
    if actor is not None:
        details["actor"] = actor
    audit.append(GALLERY_EVENT, person=person, details=details)


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
