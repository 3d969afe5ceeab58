"""Reading and decoding images, with errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError

MAX_BYTES = 50 * 1024 * 1024  # a snapshot larger than this is not a camera frame


def decode_image(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG/... bytes into a BGR uint8 image; ImageError when they are not one."""
    if not data:
        raise ImageError("empty image data")
    if len(data) > MAX_BYTES:
        raise ImageError(f"image data too large ({len(data)} bytes)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError("data is not a decodable image")
    return image


def read_image(path: Path | str) -> np.ndarray:
    """Read an image file (grayscale files become 3-channel BGR)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        return decode_image(data)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from exc


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("JPEG encoding failed")
    return buffer.tobytes()
