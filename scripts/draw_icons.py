"""Draw the add-on's icon.png (128x128) and logo.png (250x100): a padlock whose body is a face.

Run from the repository root: `.venv/bin/python scripts/draw_icons.py`. Drawn at 4x and scaled
down for smooth edges; transparent background (BGRA PNG).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BLUE = (244, 169, 3, 255)  # Home Assistant's blue, BGR + alpha
WHITE = (255, 255, 255, 255)
INK = (60, 50, 40, 255)
SS = 4  # supersampling factor


def glyph(canvas: np.ndarray, x: int, y: int, size: int) -> None:
    """The padlock-face in the square at (x, y) of side `size`, in supersampled pixels."""
    s = size / 128

    def p(u: float, v: float) -> tuple[int, int]:  # glyph units (0..128) to canvas pixels
        return int(x + u * s), int(y + v * s)

    cv2.rectangle(canvas, p(4, 4), p(124, 124), BLUE, -1, cv2.LINE_AA)
    cv2.ellipse(canvas, p(64, 52), (int(26 * s), int(28 * s)), 0, 180, 360, WHITE, int(10 * s), cv2.LINE_AA)
    cv2.line(canvas, p(38, 52), p(38, 62), WHITE, int(10 * s), cv2.LINE_AA)
    cv2.line(canvas, p(90, 52), p(90, 62), WHITE, int(10 * s), cv2.LINE_AA)
    cv2.rectangle(canvas, p(24, 58), p(104, 114), WHITE, -1, cv2.LINE_AA)
    for eye in (48, 80):
        cv2.circle(canvas, p(eye, 78), int(6 * s), INK, -1, cv2.LINE_AA)
    cv2.ellipse(canvas, p(64, 90), (int(16 * s), int(10 * s)), 0, 20, 160, INK, int(5 * s), cv2.LINE_AA)


def draw(width: int, height: int, text: bool) -> np.ndarray:
    canvas = np.zeros((height * SS, width * SS, 4), np.uint8)
    side = min(width, height) * SS
    glyph(canvas, 0, (height * SS - side) // 2, side)
    if text:  # as large as fits beside the glyph
        room, font, thick = width * SS - side - 12 * SS, cv2.FONT_HERSHEY_DUPLEX, 2 * SS
        (w, h), _ = cv2.getTextSize("FaceLock", font, 1.0, thick)
        scale = room / w
        org = (side + 6 * SS, (height * SS + int(h * scale)) // 2)
        cv2.putText(canvas, "FaceLock", org, font, scale, INK, thick, cv2.LINE_AA)
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)


def main() -> None:
    cv2.imwrite(str(ROOT / "icon.png"), draw(128, 128, text=False), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    cv2.imwrite(str(ROOT / "logo.png"), draw(250, 100, text=True), [cv2.IMWRITE_PNG_COMPRESSION, 9])


if __name__ == "__main__":
    main()
