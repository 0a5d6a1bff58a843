"""The one home of the wire's images, encoding and decoding: sizes are read from the file's own
header and checked against what the message says *before* any pixel is allocated.

A PNG's size sits in its IHDR chunk; a JPEG's in its SOF marker segment.  A lying image (a 1 KB
JPEG that declares 30000x30000) is refused here, cheaply, instead of being decoded.
"""
from __future__ import annotations

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RSTn: markers without a length
MAX_JPEG_SEGMENTS = 64


class ImageError(ValueError):
    """An image that is not what it claims to be; ``reason`` is a short stable tag."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A 0/255 uint8 mask as PNG, fast compression (masks are mostly zero)."""
    import cv2

    ok, buf = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ImageError("encode_failed", "PNG encoding failed")
    return buf.tobytes()


def encode_jpeg(frame: np.ndarray, quality: int = 80) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageError("encode_failed", "JPEG encoding failed")
    return buf.tobytes()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, or ImageError."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ImageError("bad_png", "not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the first SOF marker segment, walking segment lengths (bounded)."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise ImageError("bad_jpeg", "not a JPEG (no SOI)")
    pos = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        while pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > len(data) or data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker in _NO_LENGTH:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF:
            if length < 7 or pos + 9 > len(data):
                break
            return int.from_bytes(data[pos + 7:pos + 9], "big"), int.from_bytes(data[pos + 5:pos + 7], "big")
        if marker == 0xDA or length < 2:  # scan data before any SOF: not a usable JPEG
            break
        pos += 2 + length
    raise ImageError("bad_jpeg", "no frame size (SOF) found")


def check_size(found: tuple[int, int], width: int, height: int, what: str) -> None:
    if found != (width, height):
        raise ImageError(f"bad_{what}", f"{what.upper()} is {found[0]}x{found[1]}, header says {width}x{height}")


def decode_mask_png(data: bytes, width: int, height: int) -> np.ndarray:
    """A single-channel PNG of exactly ``width`` x ``height``, or ImageError."""
    import cv2

    check_size(png_size(data), width, height, "png")
    try:
        mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error as e:
        raise ImageError("bad_png", str(e)[:80]) from None
    if mask is None or mask.shape != (height, width):
        raise ImageError("bad_png", "does not decode")
    return mask


def decode_jpeg(data: bytes, width: int, height: int) -> np.ndarray:
    """A BGR JPEG of exactly ``width`` x ``height`` (size checked before decoding), or ImageError."""
    import cv2

    check_size(jpeg_size(data), width, height, "jpeg")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise ImageError("bad_jpeg", str(e)[:80]) from None
    if img is None or img.shape[:2] != (height, width):
        raise ImageError("bad_jpeg", "does not decode")
    return img
