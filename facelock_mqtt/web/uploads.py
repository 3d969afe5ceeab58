"""Photo uploads: multipart `image` fields, bounded in bytes and pixels before anything is decoded.

The pixel bound is checked from the JPEG or PNG header, so a small file that would expand to a
huge image (a decompression bomb) is refused without decoding it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from aiohttp import web

from ..errors import ImageError
from ..pipeline.imageio import decode_image

CHUNK = 64 * 1024
MAX_FILES = 20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass
class Upload:
    name: str
    data: bytes
    image: np.ndarray | None = None
    refused: str | None = None  # why it cannot be used at all (not an image, too many pixels)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG or JPEG header; ImageError for anything else."""
    if data.startswith(PNG_MAGIC) and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                break
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if marker in JPEG_SOF:
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return width, height
            i += 2 + length
        raise ImageError("a JPEG without a readable size")
    raise ImageError("not a JPEG or PNG image")


def decode_bounded(upload: Upload, max_pixels: int) -> Upload:
    """Fill `image`, or `refused` with the reason."""
    try:
        width, height = image_size(upload.data)
        if width * height > max_pixels:
            upload.refused = f"too large ({width} x {height} pixels; at most {max_pixels:,})"
            return upload
        upload.image = decode_image(upload.data)
    except ImageError as exc:
        upload.refused = str(exc)
    return upload


async def read_uploads(request: web.Request, max_bytes: int) -> list[Upload]:
    """Every `image` field of a multipart request; 413 past `max_bytes` in all, 400 for bad forms."""
    if not request.content_type.startswith("multipart/"):
        raise web.HTTPBadRequest(text="send the photos as multipart/form-data `image` fields")
    reader = await request.multipart()
    uploads: list[Upload] = []
    total = 0
    while (part := await reader.next()) is not None:
        if getattr(part, "name", None) != "image":
            raise web.HTTPBadRequest(text=f"unexpected form field {getattr(part, 'name', None)!r}; send `image` fields")
        if len(uploads) >= MAX_FILES:
            raise web.HTTPBadRequest(text=f"at most {MAX_FILES} photos per upload")
        chunks = []
        while chunk := await part.read_chunk(CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=total)
            chunks.append(chunk)
        uploads.append(Upload(part.filename or f"photo {len(uploads) + 1}", b"".join(chunks)))
    if not uploads:
        raise web.HTTPBadRequest(text="no `image` field in the upload")
    return uploads
