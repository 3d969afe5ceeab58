"""Image decoding under hostile input: the pixel count a JPEG/PNG header declares is read and
bounded before anything is decoded, without refusing real camera frames (NUAA webcam frames,
Frigate-like snapshots: baseline, progressive, restart markers, EXIF)."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from facelock_mqtt.errors import ImageError
from facelock_mqtt.pipeline.imageio import (
    FILE_MAX_PIXELS,
    MAX_PIXELS,
    check_pixels,
    decode_image,
    image_size,
    read_image,
)
from facelock_mqtt.pipeline.source import decode_jpeg


@pytest.fixture(scope="module")
def nuaa_jpegs(shared_data: Path) -> list[bytes]:
    files = sorted((shared_data / "nuaa/live").glob("*/*.jpg"))[::15][:10]
    assert len(files) == 10
    return [f.read_bytes() for f in files]


def drawn(width: int, height: int) -> np.ndarray:
    image = np.full((height, width, 3), 80, np.uint8)
    cv2.rectangle(image, (width // 8, height // 8), (width // 2, height // 2), (30, 180, 240), -1)
    cv2.putText(image, "FRONT DOOR", (width // 10, height - 20), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    return image


def jpeg(image: np.ndarray, *params: int) -> bytes:
    ok, data = cv2.imencode(".jpg", image, list(params))
    assert ok
    return data.tobytes()


def with_exif(data: bytes) -> bytes:
    """A camera-like APP1 (Exif) segment right after SOI, before the frame header."""
    body = b"Exif\x00\x00" + b"MM\x00\x2a" + bytes(4000)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + data[2:]


def declaring(data: bytes, width: int, height: int) -> bytes:
    """The same bytes with the JPEG frame header (or PNG IHDR) patched to declare width x height."""
    if data.startswith(b"\x89PNG"):
        return data[:16] + struct.pack(">II", width, height) + data[24:]
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at > 0:
            return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]
    raise AssertionError("no frame header found")


def test_header_size_matches_the_decoded_size_of_real_camera_frames(nuaa_jpegs: list[bytes]) -> None:
    for data in nuaa_jpegs:
        image = decode_image(data)
        assert image_size(data) == (image.shape[1], image.shape[0])
        assert decode_jpeg(data)[0] is not None


@pytest.mark.parametrize(
    "kind, params",
    [
        ("baseline", ()),
        ("progressive", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        ("restart markers", (cv2.IMWRITE_JPEG_RST_INTERVAL, 4)),
        ("optimised huffman", (cv2.IMWRITE_JPEG_OPTIMIZE, 1)),
    ],
)
def test_frigate_like_snapshots_are_measured_and_decoded(kind: str, params: tuple[int, ...]) -> None:
    for data in (jpeg(drawn(1280, 720), *params), with_exif(jpeg(drawn(1920, 1080), *params))):
        width, height = image_size(data)
        image, why = decode_jpeg(data)
        assert why == "" and image.shape[:2] == (height, width), kind


def test_png_header_is_read() -> None:
    data = cv2.imencode(".png", drawn(300, 200))[1].tobytes()
    assert image_size(data) == (300, 200)
    assert decode_image(data).shape == (200, 300, 3)


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    """A small file declaring 20000 x 20000 (1.2 GB decoded) is refused before OpenCV sees it."""
    small = jpeg(drawn(640, 480))
    bomb = declaring(small, 20_000, 20_000)
    assert len(bomb) < 100_000 and image_size(bomb) == (20_000, 20_000)
    with pytest.raises(ImageError, match=r"20000x20000 = 400.0 MP, over the 40 MP limit; not decoded"):
        decode_image(bomb)
    image, why = decode_jpeg(bomb)
    assert image is None and "over the 40 MP limit" in why
    png = cv2.imencode(".png", drawn(64, 64))[1].tobytes()
    with pytest.raises(ImageError, match="MP limit"):
        decode_image(declaring(png, 30_000, 30_000))


def test_the_bound_is_a_parameter_and_files_have_a_higher_one(tmp_path: Path) -> None:
    """Snapshots: 40 MP (camera setting); photo files: FILE_MAX_PIXELS, so a 108 MP phone photo passes,
    and JPEG files up to JPEG_FILE_MAX_PIXELS by a reduced decode."""
    header = declaring(jpeg(drawn(64, 64)), 12_000, 9_000)  # 108 MP
    with pytest.raises(ImageError, match="MP limit"):
        check_pixels(header, MAX_PIXELS)
    check_pixels(header, FILE_MAX_PIXELS)  # no error: the header passes the files' bound
    with pytest.raises(ImageError, match="over the 1 MP limit"):
        decode_image(jpeg(drawn(1280, 1024)), max_pixels=1_000_000)
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(declaring(jpeg(drawn(64, 64)), 60_000, 60_000))  # 3.6 GP: past even a reduced decode
    with pytest.raises(ImageError, match=r"huge\.jpg: .*MP limit"):
        read_image(huge)


def test_unreadable_headers_are_refused_for_snapshots_but_other_file_formats_still_read(tmp_path: Path) -> None:
    small = jpeg(drawn(320, 240))
    start_of_scan = small.find(b"\xff\xda")
    frame_header = small.find(b"\xff\xc0")
    no_frame_header = small[:frame_header] + small[start_of_scan:]  # scan data before any SOF
    broken = [
        small[:frame_header + 6],  # cut inside the frame header
        no_frame_header,
        small[:2] + b"\x12\x34" + small[2:],  # junk where a marker must be
        small[:2] + b"\xff\xe0\x00\x01" + small[2:],  # a segment length below 2
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"tEXt" + bytes(13),  # IHDR not first
    ]
    for data in broken:
        assert image_size(data) is None
        with pytest.raises(ImageError):
            decode_image(data)
    bmp = cv2.imencode(".bmp", drawn(320, 240))[1].tobytes()
    with pytest.raises(ImageError, match="not a JPEG or PNG"):
        decode_image(bmp)  # a snapshot must be JPEG or PNG: fail secure
    path = tmp_path / "photo.bmp"
    path.write_bytes(bmp)
    assert read_image(path).shape == (240, 320, 3)  # the user's own photo file in another format


def test_empty_dimensions_are_refused() -> None:
    png = cv2.imencode(".png", drawn(16, 16))[1].tobytes()
    zero = declaring(png, 0, 16)
    with pytest.raises(ImageError, match="empty image"):
        decode_image(zero)


def test_a_144_megapixel_photo_file_is_decoded_at_half_scale_and_its_face_found(tmp_path: Path, shared_data: Path) -> None:
    """A 12000x12000 photo (over FILE_MAX_PIXELS) with a normal-size face: decoded reduced in the
    JPEG's DCT domain (never held at full size), and the face is still there to enroll."""
    face = cv2.imread(str(shared_data / "deepface" / "person01" / "img2.jpg"))
    canvas = np.full((12000, 12000, 3), 120, np.uint8)
    canvas[4000 : 4000 + face.shape[0] * 2, 5000 : 5000 + face.shape[1] * 2] = cv2.resize(face, None, fx=2, fy=2)
    path = tmp_path / "huge.jpg"
    assert cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    del canvas
    image = read_image(path)
    assert image.shape == (6000, 6000, 3)
    from facelock_mqtt.models.default_bundle import default_bundle
    from facelock_mqtt.pipeline.engine import FaceEngine
    from facelock_mqtt.settings import ModelSettings, QualitySettings

    engine = FaceEngine(default_bundle(tmp_path / "data"), ModelSettings(threads=2), QualitySettings())
    found = engine.analyze(image)
    assert found is not None and found.quality.ok, found
