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
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from edge import images
# The headers' schema and limits live in edge/headers.py; they are part of this module's interface.
from edge.headers import (MAX_CRACKS, MAX_INT, MAX_SIDE, RUN_ID_RE, SCHEMA, VEHICLE_ID_RE, Crack, Ground,  # noqa: F401
                          Header, MaskHeader, Position, PositionStatus, StatusHeader, WireError)

MASK_PREFIX = "mask/"
STATUS_PREFIX = "status/"

MAX_FRAME_BYTES = 32 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_INT_DIGITS = 20        # longer digit strings are refused before int() (Python's own limit raises ValueError)


class Defaults:
    """Socket settings shared by every publisher and subscriber of this project."""
    SNDHWM = 32               # messages queued per subscriber before PUB drops (never blocks)
    RCVHWM = 64
    LINGER_MS = 500           # bounded: closing a socket never waits longer than this
    HEARTBEAT_IVL_MS = 1000   # ZMTP PING every second ...
    HEARTBEAT_TIMEOUT_MS = 3000  # ... and a peer silent for 3 s is dropped (half-open links)
    HEARTBEAT_TTL_MS = 6000
    # Receivers (SUB/XSUB) find half-open links by TCP keepalive instead, ~4 s: libzmq 4.3 aborts
    # a receiver whose own heartbeat times out while its queue is full (libzmq #3937, #4767).
    TCP_KEEPALIVE_IDLE_S = 2
    TCP_KEEPALIVE_INTVL_S = 1
    TCP_KEEPALIVE_CNT = 2
    RECONNECT_IVL_MS = 200
    RECONNECT_IVL_MAX_MS = 2000
    STATUS_PERIOD_S = 1.0     # the daemon's heartbeat on status/<vehicle_id>
    STALE_AFTER_S = 3.0       # a viewer marks a vehicle stale after this much silence
    ENDPOINT = "tcp://127.0.0.1:5555"


@dataclass
class Message:
    """A decoded message. ``mask`` is None for status messages; ``frame_jpeg`` may be None."""
    kind: str
    vehicle_id: str
    header: MaskHeader | StatusHeader
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
    """A 0/255 uint8 mask as base64 PNG (frame 3)."""
    try:
        return base64.b64encode(images.encode_mask_png(mask))
    except images.ImageError as e:
        raise WireError("encode_failed", str(e)) from None


def jpeg_b64(frame: np.ndarray, quality: int = 80) -> bytes:
    """A BGR frame as base64 JPEG (frame 4)."""
    try:
        return base64.b64encode(images.encode_jpeg(frame, quality))
    except images.ImageError as e:
        raise WireError("encode_failed", str(e)) from None


def _json(header: MaskHeader | StatusHeader) -> bytes:
    try:
        return json.dumps(header.to_dict(), separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:  # an undeclared extra field that JSON cannot hold
        raise WireError("bad_field", str(e)[:80]) from None


def mask_header(header: MaskHeader | Mapping[str, Any], has_frame: bool | None = None) -> MaskHeader:
    """``header`` as a checked MaskHeader; a mapping (tests, tools) is checked as a received one is."""
    if not isinstance(header, MaskHeader):
        data = {**header, "schema": SCHEMA, "kind": "mask"}
        if has_frame is not None:
            data["has_frame"] = has_frame
        data.setdefault("has_frame", False)
        return MaskHeader.from_dict(data)
    if has_frame is not None and header.has_frame != has_frame:
        header = header.replace(has_frame=has_frame)
    return header


def status_header(header: StatusHeader | Mapping[str, Any]) -> StatusHeader:
    if not isinstance(header, StatusHeader):
        header = StatusHeader.from_dict({**header, "schema": SCHEMA, "kind": "status"})
    return header


def encode_mask(header: MaskHeader | Mapping[str, Any], mask_png_b64: bytes,
                frame_jpeg_b64: bytes | None = None) -> list[bytes]:
    """The frames of a mask message; ``has_frame`` follows ``frame_jpeg_b64``."""
    h = mask_header(header, frame_jpeg_b64 is not None)
    frames = [f"{MASK_PREFIX}{h.vehicle_id}".encode(), _json(h), mask_png_b64]
    if frame_jpeg_b64 is not None:
        frames.append(frame_jpeg_b64)
    return frames


def encode_status(header: StatusHeader | Mapping[str, Any]) -> list[bytes]:
    h = status_header(header)
    return [f"{STATUS_PREFIX}{h.vehicle_id}".encode(), _json(h)]


# ---------------------------------------------------------------- decoding

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


def _b64(data: bytes, what: str) -> bytes:
    if len(data) > MAX_FRAME_BYTES:
        raise WireError("too_large", f"{what} frame of {len(data)} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WireError("bad_base64", f"{what}: {e}") from None


def decode_header(frames: list[bytes]) -> tuple[str, str, MaskHeader | StatusHeader]:
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
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise WireError("bad_json", "header is not an object")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise WireError("unknown_schema", repr(schema)[:32])
    if data.get("kind") != kind:
        raise WireError("bad_field", f"kind={data.get('kind')!r:.32} on topic {topic[:64]}")
    header: MaskHeader | StatusHeader = (MaskHeader if kind == "mask" else StatusHeader).from_dict(data)
    if header.vehicle_id != vehicle:
        raise WireError("bad_field", f"vehicle_id {header.vehicle_id[:64]!r} != topic {vehicle[:64]!r}")
    if isinstance(header, MaskHeader):
        expected = 4 if header.has_frame else 3
        if len(frames) != expected:
            raise WireError("frame_count", f"{len(frames)} frames, has_frame={header.has_frame}")
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
