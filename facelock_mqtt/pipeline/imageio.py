"""Reading and decoding images, with errors a user can act on.

A small file can declare a huge image (a 4.7 MB JPEG decoded to 1.2 GB), so the pixel count an
image's header declares is checked before anything is decoded: JPEG (its SOFn marker) and PNG
(its IHDR chunk) headers are parsed here, because OpenCV has no header-only API.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError

MAX_BYTES = 50 * 1024 * 1024  # a snapshot larger than this is not a camera frame
MAX_PIXELS = 40_000_000  # camera snapshots: 8K UHD is 33 MP; decoded, 40 MP is 120 MB of BGR
# Photo files (enroll, identify, verify) come from phones too: 108 MP sensors exist (360 MB of BGR).
FILE_MAX_PIXELS = 120_000_000
# A JPEG file above DECODE_PIXELS is decoded at 1/2, 1/4 or 1/8 scale (libjpeg scales in the DCT
# domain: the full-size image never exists in memory), so a far larger one is still usable.
DECODE_PIXELS = 40_000_000
JPEG_FILE_MAX_PIXELS = 64 * DECODE_PIXELS
_REDUCED = ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8))

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers: baseline, extended, progressive, lossless, hierarchical, arithmetic.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 JPG, CC DAC are not frames
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) a JPEG or PNG header declares; None when it is neither or is malformed."""
    if data.startswith(PNG_SIGNATURE):
        # The IHDR chunk must come first: length 13, type, then width and height (big-endian).
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments after SOI up to the first start-of-frame."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None  # a segment must start with a marker
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data, before any frame header
            return None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if pos + 9 > end or length < 7:
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def check_pixels(data: bytes, max_pixels: int, *, known_only: bool = True) -> None:
    """Refuse (ImageError) an image whose header declares more than `max_pixels` pixels.

    With `known_only` (camera snapshots: fail secure) a header that cannot be read is refused too;
    without it (the user's own photo files, e.g. WebP or TIFF) OpenCV's own 1-gigapixel bound is
    the only one for formats other than JPEG and PNG.
    """
    size = image_size(data)
    if size is None:
        if known_only:
            raise ImageError("not a JPEG or PNG with a readable header")
        return
    width, height = size
    if width == 0 or height == 0:
        raise ImageError(f"the header declares an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"the header declares {width}x{height} = {width * height / 1e6:.1f} MP, "
            f"over the {max_pixels / 1e6:.0f} MP limit; not decoded"
        )


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, *, known_only: bool = True) -> np.ndarray:
    """Decode JPEG/PNG bytes into a BGR uint8 image; ImageError when they are not one, or declare
    more than `max_pixels` pixels (checked from the header, before decoding)."""
    if not data:
        raise ImageError("empty image data")
    if len(data) > MAX_BYTES:
        raise ImageError(f"image data too large ({len(data)} bytes)")
    check_pixels(data, max_pixels, known_only=known_only)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError("data is not a decodable image")
    return image


def read_image(path: Path | str, max_pixels: int = FILE_MAX_PIXELS) -> np.ndarray:
    """Read an image file (grayscale files become 3-channel BGR); any format OpenCV reads, with
    JPEG and PNG held to `max_pixels` before decoding."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        size = _jpeg_size(data) if data[:2] == b"\xff\xd8" else None
        if size is not None and size[0] * size[1] > DECODE_PIXELS:
            return _decode_reduced(data, size)
        return decode_image(data, max_pixels, known_only=False)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from exc


def _decode_reduced(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """A big JPEG at the least reduction that brings it within DECODE_PIXELS."""
    if len(data) > MAX_BYTES:
        raise ImageError(f"image data too large ({len(data)} bytes)")
    check_pixels(data, JPEG_FILE_MAX_PIXELS)
    pixels = size[0] * size[1]
    flag = next(flag for factor, flag in _REDUCED if pixels / factor**2 <= DECODE_PIXELS)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None or image.size == 0:
        raise ImageError("data is not a decodable image")
    return image


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("JPEG encoding failed")
    return buffer.tobytes()
