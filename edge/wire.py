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
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge import images

SCHEMA = 1
MASK_PREFIX = "mask/"
STATUS_PREFIX = "status/"

# Sizes beyond these are absurd for a road camera and are refused before decoding pixels.
MAX_SIDE = 8192
MAX_FRAME_BYTES = 32 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_INT = 2**53            # integers a JSON reader in any language holds exactly; seq etc. stay below
MAX_INT_DIGITS = 20        # longer digit strings are refused before int() (Python's own limit raises ValueError)
VEHICLE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
RUN_ID_RE = re.compile(r"[0-9a-f]{32}")
# Integer fields that count or index: 0 <= value < MAX_INT.
COUNT_FIELDS = ("seq", "frame_index", "crack_count")
# Optional fields with a documented type; absent is fine, present must be right.
OPTIONAL_MASK_FIELDS: dict[str, type | tuple[type, ...]] = {
    "threshold": (int, float), "frame_width": int, "frame_height": int,
    "position": (dict, type(None)), "ground": (dict, type(None)), "cracks": (list, type(None)),
    "calibrated": bool,
}
MAX_CRACKS = 32
# Optional status fields (the history service, issue #17): absent is fine, present must be right.
OPTIONAL_STATUS_FIELDS: dict[str, type | tuple[type, ...]] = {
    "history": (str, type(None)), "first_mask_seq": (int, type(None)), "last_mask_seq": (int, type(None)),
}
MAX_ENDPOINT_CHARS = 256

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
    frame_error: str = ""   # why a frame 4 that was sent was dropped (not a JPEG, wrong size)

    def frame(self) -> np.ndarray | None:
        """Decode the optional camera frame (BGR), or None if the daemon sent none."""
        if self.frame_jpeg is None:
            return None
        try:
            return images.decode_jpeg(self.frame_jpeg, self.header["width"], self.header["height"])
        except images.ImageError as e:
            raise WireError(e.reason, str(e)) from None


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
    _check_values(header, "mask")
    frames = [f"{MASK_PREFIX}{header['vehicle_id']}".encode(), _json(header), mask_png_b64]
    if frame_jpeg_b64 is not None:
        frames.append(frame_jpeg_b64)
    return frames


def encode_status(header: dict[str, Any]) -> list[bytes]:
    header = {**header, "schema": SCHEMA, "kind": "status"}
    _check_fields(header, STATUS_FIELDS)
    _check_values(header, "status")
    return [f"{STATUS_PREFIX}{header['vehicle_id']}".encode(), _json(header)]


# ---------------------------------------------------------------- decoding

def _check_fields(header: dict[str, Any], spec: dict[str, type | tuple[type, ...]], optional: bool = False) -> None:
    for name, typ in spec.items():
        if name not in header:
            if optional:
                continue
            raise WireError("missing_field", name)
        value = header[name]
        # bool is an int in Python; a field typed int must not accept True.
        if isinstance(value, bool) and typ is not bool:
            raise WireError("bad_field", f"{name}={value!r}")
        if not isinstance(value, typ):
            raise WireError("bad_field", f"{name}={value!r}")


def _refuse_constant(name: str) -> float:
    raise WireError("bad_number", f"{name} is not standard JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise WireError("bad_number", f"{text[:32]} is not finite")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:  # before int(): a 5000-digit string would raise ValueError
        raise WireError("bad_number", f"integer of {len(text)} digits")
    return int(text)


def parse_json(raw: bytes) -> Any:
    """Standard JSON only: NaN/Infinity, non-finite floats and huge integers raise WireError."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WireError("bad_json", str(e)[:80]) from None


def _check_values(header: dict[str, Any], kind: str) -> None:
    """The documented constraints beyond types: character sets, ranges, sizes."""
    vid, run = header["vehicle_id"], header["run_id"]
    if not VEHICLE_ID_RE.fullmatch(vid):
        raise WireError("bad_field", f"vehicle_id {vid[:64]!r}: letters, digits, . _ - (1-64)")
    if not RUN_ID_RE.fullmatch(run):
        raise WireError("bad_field", f"run_id {run[:64]!r}: 32 hex digits")
    for name in COUNT_FIELDS:
        value = header.get(name)
        if value is not None and not 0 <= value < MAX_INT:
            raise WireError("bad_field", f"{name}={value} out of 0..2**53")
    if kind == "status":
        _check_fields(header, OPTIONAL_STATUS_FIELDS, optional=True)
        for name in ("first_mask_seq", "last_mask_seq"):
            value = header.get(name)
            if value is not None and not 0 <= value < MAX_INT:
                raise WireError("bad_field", f"{name}={value} out of 0..2**53")
        if len(header.get("history") or "") > MAX_ENDPOINT_CHARS:
            raise WireError("bad_field", f"history endpoint longer than {MAX_ENDPOINT_CHARS} characters")
        return
    _check_fields(header, OPTIONAL_MASK_FIELDS, optional=True)
    for name in ("frame_width", "frame_height"):
        value = header.get(name)
        if value is not None and not 0 < value <= MAX_SIDE:
            raise WireError("absurd_size", f"{name}={value} out of 1..{MAX_SIDE}")
    cracks = header.get("cracks")
    if cracks is not None and len(cracks) > MAX_CRACKS:
        raise WireError("bad_field", f"cracks has {len(cracks)} entries, at most {MAX_CRACKS}")


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
    header = parse_json(raw)
    if not isinstance(header, dict):
        raise WireError("bad_json", "header is not an object")
    schema = header.get("schema")
    if schema != SCHEMA:
        raise WireError("unknown_schema", repr(schema)[:32])
    if header.get("kind") != kind:
        raise WireError("bad_field", f"kind={header.get('kind')!r} on topic {topic[:64]}")
    _check_fields(header, MASK_FIELDS if kind == "mask" else STATUS_FIELDS)
    if header["vehicle_id"] != vehicle:
        raise WireError("bad_field", f"vehicle_id {header['vehicle_id'][:64]!r} != topic {vehicle[:64]!r}")
    _check_values(header, kind)
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
    frame_error = ""
    if jpeg is not None:
        # The frame is extra: a lying or broken one is dropped (and said why), the mask still counts.
        try:
            images.check_size(images.jpeg_size(jpeg), header["width"], header["height"], "jpeg")
        except images.ImageError as e:
            jpeg, frame_error = None, str(e)
    mask = None
    if decode_mask:
        mask = decode_png(png, header["width"], header["height"])
    return Message(kind, vehicle, header, mask, jpeg, frame_error)


def decode_png(png: bytes, width: int, height: int) -> np.ndarray:
    """The mask PNG, its IHDR size checked against the header before decoding."""
    try:
        return images.decode_mask_png(png, width, height)
    except images.ImageError as e:
        raise WireError(e.reason, str(e)) from None
