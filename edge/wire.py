"""The wire format between the edge daemon and its subscribers (schema 1).

One module, imported by the daemon (encode) and the viewer (decode), so the two cannot
drift.  ``docs/protocol.md`` documents every frame and field; this file is its code.
Pure functions, no sockets: round-trip tested on their own.

A message is a ZeroMQ multipart message:

=====  =====================================================================
frame  content
=====  =====================================================================
1      topic, UTF-8: ``mask/<vehicle_id>`` or ``status/<vehicle_id>``
2      header, UTF-8 JSON object (fields below)
3      mask frames only: base64 of a PNG, 8-bit single channel, 0 or 255
4      mask frames only, optional: base64 of a JPEG of the camera frame
=====  =====================================================================
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA = 1
MASK_PREFIX = "mask/"
STATUS_PREFIX = "status/"

# Sizes beyond these are absurd for a road camera and are refused before decoding pixels.
MAX_SIDE = 8192
MAX_FRAME_BYTES = 32 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024

MASK_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": int, "kind": str, "vehicle_id": str, "run_id": str, "seq": int,
    "frame_index": int, "t_capture": (int, float), "t_publish": (int, float),
    "infer_ms": (int, float), "model_sha256": str, "width": int, "height": int,
    "crack_ratio": (int, float), "crack_count": int, "crack_length_px": (int, float),
    "crack_max_width_px": (int, float), "has_frame": bool,
}
STATUS_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": int, "kind": str, "vehicle_id": str, "run_id": str, "seq": int,
    "t_publish": (int, float), "fps": (int, float), "drops": dict, "source": dict,
    "backend": str, "model_sha256": str, "width": int, "height": int,
}


class Defaults:
    """Socket settings shared by every publisher and subscriber of this project."""
    SNDHWM = 32               # messages queued per subscriber before PUB drops (never blocks)
    RCVHWM = 64
    LINGER_MS = 500           # bounded: closing a socket never waits longer than this
    HEARTBEAT_IVL_MS = 1000   # ZMTP PING every second ...
    HEARTBEAT_TIMEOUT_MS = 3000  # ... and a peer silent for 3 s is dropped (half-open links)
    HEARTBEAT_TTL_MS = 6000
    RECONNECT_IVL_MS = 200
    RECONNECT_IVL_MAX_MS = 2000
    STATUS_PERIOD_S = 1.0     # the daemon's heartbeat on status/<vehicle_id>
    STALE_AFTER_S = 3.0       # a viewer marks a vehicle stale after this much silence
    ENDPOINT = "tcp://127.0.0.1:5555"


class WireError(ValueError):
    """A message that does not follow this protocol; ``reason`` is a short stable tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Message:
    """A decoded message. ``mask`` is None for status messages; ``frame_jpeg`` may be None."""
    kind: str
    vehicle_id: str
    header: dict[str, Any]
    mask: np.ndarray | None = None
    frame_jpeg: bytes | None = field(default=None, repr=False)

    def frame(self) -> np.ndarray | None:
        """Decode the optional camera frame (BGR), or None if the daemon sent none."""
        if self.frame_jpeg is None:
            return None
        import cv2

        img = cv2.imdecode(np.frombuffer(self.frame_jpeg, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise WireError("bad_jpeg", "frame does not decode as JPEG")
        return img


# ---------------------------------------------------------------- encoding

def png_b64(mask: np.ndarray) -> bytes:
    """A 0/255 uint8 mask as base64 PNG (fast compression: masks are mostly zero)."""
    import cv2

    ok, buf = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise WireError("encode_failed", "PNG encoding failed")
    return base64.b64encode(buf)


def jpeg_b64(frame: np.ndarray, quality: int = 80) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise WireError("encode_failed", "JPEG encoding failed")
    return base64.b64encode(buf)


def _json(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode()


def encode_mask(header: dict[str, Any], mask_png_b64: bytes, frame_jpeg_b64: bytes | None = None) -> list[bytes]:
    """Build the frames of a mask message; ``header`` must carry every field of MASK_FIELDS."""
    header = {**header, "schema": SCHEMA, "kind": "mask", "has_frame": frame_jpeg_b64 is not None}
    _check_fields(header, MASK_FIELDS)
    frames = [f"{MASK_PREFIX}{header['vehicle_id']}".encode(), _json(header), mask_png_b64]
    if frame_jpeg_b64 is not None:
        frames.append(frame_jpeg_b64)
    return frames


def encode_status(header: dict[str, Any]) -> list[bytes]:
    header = {**header, "schema": SCHEMA, "kind": "status"}
    _check_fields(header, STATUS_FIELDS)
    return [f"{STATUS_PREFIX}{header['vehicle_id']}".encode(), _json(header)]


# ---------------------------------------------------------------- decoding

def _check_fields(header: dict[str, Any], spec: dict[str, type | tuple[type, ...]]) -> None:
    for name, typ in spec.items():
        if name not in header:
            raise WireError("missing_field", name)
        value = header[name]
        # bool is an int in Python; a field typed int must not accept True.
        if isinstance(value, bool) and typ is not bool:
            raise WireError("bad_field", f"{name}={value!r}")
        if not isinstance(value, typ):
            raise WireError("bad_field", f"{name}={value!r}")


def _b64(data: bytes, what: str) -> bytes:
    if len(data) > MAX_FRAME_BYTES:
        raise WireError("too_large", f"{what} frame of {len(data)} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WireError("bad_base64", f"{what}: {e}") from None


def decode_header(frames: list[bytes]) -> tuple[str, str, dict[str, Any]]:
    """Check topic and header only (cheap): returns (kind, vehicle_id, header)."""
    if len(frames) < 2:
        raise WireError("frame_count", f"{len(frames)} frames")
    try:
        topic = bytes(frames[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("bad_topic", "not UTF-8") from None
    if topic.startswith(MASK_PREFIX):
        kind, vehicle = "mask", topic[len(MASK_PREFIX):]
    elif topic.startswith(STATUS_PREFIX):
        kind, vehicle = "status", topic[len(STATUS_PREFIX):]
    else:
        raise WireError("bad_topic", topic[:64])
    raw = bytes(frames[1])
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError("too_large", f"header of {len(raw)} bytes")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WireError("bad_json", str(e)[:80]) from None
    if not isinstance(header, dict):
        raise WireError("bad_json", "header is not an object")
    schema = header.get("schema")
    if schema != SCHEMA:
        raise WireError("unknown_schema", repr(schema)[:32])
    if header.get("kind") != kind:
        raise WireError("bad_field", f"kind={header.get('kind')!r} on topic {topic[:64]}")
    _check_fields(header, MASK_FIELDS if kind == "mask" else STATUS_FIELDS)
    if header["vehicle_id"] != vehicle:
        raise WireError("bad_field", f"vehicle_id {header['vehicle_id']!r} != topic {vehicle!r}")
    if kind == "mask":
        w, h = header["width"], header["height"]
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            raise WireError("absurd_size", f"{w}x{h}")
        expected = 4 if header["has_frame"] else 3
        if len(frames) != expected:
            raise WireError("frame_count", f"{len(frames)} frames, has_frame={header['has_frame']}")
    elif len(frames) != 2:
        raise WireError("frame_count", f"{len(frames)} frames for status")
    return kind, vehicle, header


def decode(frames: list[bytes], decode_mask: bool = True) -> Message:
    """Decode one multipart message; raises WireError (never anything else) on bad input."""
    kind, vehicle, header = decode_header(frames)
    if kind == "status":
        return Message(kind, vehicle, header)
    png = _b64(bytes(frames[2]), "mask")
    jpeg = _b64(bytes(frames[3]), "frame") if header["has_frame"] else None
    mask = None
    if decode_mask:
        mask = decode_png(png, header["width"], header["height"])
    return Message(kind, vehicle, header, mask, jpeg)


def decode_png(png: bytes, width: int, height: int) -> np.ndarray:
    import cv2

    # PNG's IHDR holds the size at bytes 16..24: refuse a lying image before allocating it.
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n":
        raise WireError("bad_png", "not a PNG")
    pw, ph = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    if (pw, ph) != (width, height):
        raise WireError("bad_png", f"PNG is {pw}x{ph}, header says {width}x{height}")
    try:
        mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error as e:
        raise WireError("bad_png", str(e)[:80]) from None
    if mask is None or mask.shape != (height, width):
        raise WireError("bad_png", "does not decode")
    return mask
