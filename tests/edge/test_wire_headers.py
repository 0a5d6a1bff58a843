"""The typed headers (edge/headers.py, issue #14 item 6): one declared schema that the senders build,
``encode_*`` take and ``decode`` returns; the bytes on the wire stay what they were."""
from __future__ import annotations

import dataclasses
import json
import uuid

import numpy as np
import pytest

from edge import wire
from edge.headers import Crack, Ground, MaskHeader, Position, PositionStatus, StatusHeader, WireError

RUN = uuid.uuid4().hex
POSITION = {"source": "gpsd", "fix": True, "reason": "", "lat": 45.07, "lon": 7.68, "alt_m": 240.5,
            "speed_mps": 8.3, "heading_deg": 91.5, "quality": "3d", "age_s": 0.04}
CRACK = {"type": "longitudinal", "length_px": 30.0, "max_width_px": 3.0, "area_px": 90, "bbox_px": [30, 10, 3, 30],
         "length_m": 0.6, "max_width_mm": 4.0, "area_m2": 0.002, "centroid_m": [0.1, 2.5], "severity": "low"}
GROUND = {"crack_length_m": 0.6, "crack_max_width_mm": 4.0, "crack_area_m2": 0.002, "surveyed_area_m2": 9.0,
          "footprint_m": [[-1.5, 5.0], [1.5, 5.0], [1.5, 2.0], [-1.5, 2.0]]}


def mask_fields(**over: object) -> dict:
    """In the order pipeline.py sends them (the old encoder kept the sender's order)."""
    h = {"vehicle_id": "van-1", "run_id": RUN, "seq": 3, "frame_index": 7, "t_capture": 1764082294.512,
         "t_publish": 1764082294.981, "infer_ms": 40.2, "model_sha256": "ab" * 32, "width": 32, "height": 24,
         "crack_ratio": 0.013, "crack_count": 1, "crack_length_px": 22.0, "crack_max_width_px": 3.0,
         "threshold": 0.5, "frame_width": 1280, "frame_height": 720, "position": POSITION}
    h.update(over)
    return h


def status_fields(**over: object) -> dict:
    h = {"vehicle_id": "van-1", "run_id": RUN, "seq": 4, "t_publish": 1764082295.0, "fps": 9.8,
         "drops": {"capture": 1, "inference": 0, "publish": 0}, "source": {"state": "ok", "uri": "clip.mp4"},
         "backend": "onnxruntime", "backend_info": {"providers": ["CPUExecutionProvider"]},
         "model_sha256": "ab" * 32, "width": 448, "height": 448, "state": "running", "uptime_s": 12.5,
         "published": 120, "last_frame_index": 119, "stages_ms": {"infer": 40.0},
         "record": {"enabled": False, "active": False, "errors": 0},
         "position": {"source": "gpsd", "state": "ok", "last_error": "", "fixes": 12, "satellites": 7,
                      "last_fix_age_s": 0.2}}
    h.update(over)
    return h


def _png() -> bytes:
    return wire.png_b64(np.zeros((24, 32), np.uint8))


def _old_json(header: dict, **added: object) -> bytes:
    """What the dict-based encoder (before the typed headers) sent."""
    return json.dumps({**header, **added}, separators=(",", ":"), allow_nan=False).encode()


def test_the_bytes_on_the_wire_are_what_the_dict_encoder_sent() -> None:
    h = mask_fields()
    frames = wire.encode_mask(MaskHeader(**h), _png())
    assert frames[1] == _old_json(h, schema=1, kind="mask", has_frame=False)
    s = status_fields()
    assert wire.encode_status(StatusHeader(**s))[1] == _old_json(s, schema=1, kind="status")
    # A mapping is still accepted (tools, tests) and gives the same bytes as the typed header.
    assert wire.encode_mask(h, _png()) == frames


def test_decode_returns_the_typed_header_and_dict_access_still_works() -> None:
    frames = wire.encode_mask(MaskHeader(**mask_fields(cracks=[CRACK], ground=GROUND, calibrated=True)), _png())
    msg = wire.decode(frames)
    h = msg.header
    assert isinstance(h, MaskHeader) and isinstance(h.position, Position) and isinstance(h.ground, Ground)
    assert isinstance(h.cracks, tuple) and isinstance(h.cracks[0], Crack)
    assert h.seq == h["seq"] == 3 and h.position.lat == h["position"]["lat"] == 45.07
    assert h.get("missing", "dflt") == "dflt" and "position" in h and h.kind == "mask" and not h.has_frame
    assert h == json.loads(frames[1])          # a record equals the JSON object it was read from
    assert h.to_dict() == json.loads(frames[1])
    assert wire.encode_mask(h, frames[2]) == frames  # decode -> encode gives the same bytes
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.seq = 4  # type: ignore[misc]


def test_status_carries_the_history_fields_typed() -> None:
    h = StatusHeader(**status_fields(history="tcp://10.0.0.2:5557", first_mask_seq=0, last_mask_seq=119))
    got = wire.decode(wire.encode_status(h)).header
    assert isinstance(got, StatusHeader) and isinstance(got.position, PositionStatus)
    assert (got.history, got.first_mask_seq, got.last_mask_seq) == ("tcp://10.0.0.2:5557", 0, 119)
    bare = wire.decode(wire.encode_status(status_fields())).header
    assert bare.history is None and "history" not in bare and bare.get("first_mask_seq") is None
    for bad in ({"history": 5}, {"first_mask_seq": -1}, {"last_mask_seq": "9"}):
        with pytest.raises(WireError):
            StatusHeader(**status_fields(**bad))


def test_unknown_fields_are_kept_as_received_at_every_level() -> None:
    h = MaskHeader.from_dict({**mask_fields(position={**POSITION, "hdop": 0.9}), "future": [1, 2],
                              "schema": 1, "kind": "mask", "has_frame": False})
    assert h["future"] == [1, 2] and h.extra == {"future": [1, 2]}
    assert h.position["hdop"] == 0.9 and json.loads(wire.encode_mask(h, _png())[1])["position"]["hdop"] == 0.9


def test_null_inside_a_nested_object_is_kept_and_an_absent_field_stays_absent() -> None:
    pos = {"source": "gpsd", "fix": False, "reason": "no_fix", "lat": None, "lon": None}
    h = wire.decode(wire.encode_mask(mask_fields(position=pos), _png())).header
    assert dict(h.position) == pos  # "lat": null is a value (not known); alt_m was never sent
    assert json.loads(wire.encode_mask(h, _png())[1])["position"] == pos


# One schema for both sides: what the decoder refuses, the encoder refuses too, for the same reason.
REFUSED = [
    ({"vehicle_id": "van 1"}, "bad_field"), ({"run_id": "x" * 32}, "bad_field"), ({"seq": -1}, "bad_field"),
    ({"seq": True}, "bad_field"), ({"width": 0}, "absurd_size"), ({"frame_height": 16384}, "absurd_size"),
    ({"threshold": "high"}, "bad_field"), ({"position": 5}, "bad_field"),
    # Nested objects are typed now (the report read them with float(): a string crashed it).
    ({"position": {**POSITION, "lat": "north"}}, "bad_field"), ({"position": {**POSITION, "lat": 91.0}}, "bad_field"),
    ({"position": {"lat": 1.0}}, "missing_field"), ({"cracks": [{**CRACK, "centroid_m": "x"}]}, "bad_field"),
    ({"cracks": [CRACK] * 33}, "bad_field"), ({"cracks": [{**CRACK, "bbox_px": [1, 2, 3, float("nan")]}]}, "bad_field"),
    ({"ground": {**GROUND, "footprint_m": [[1.0]]}}, "bad_field"), ({"ground": []}, "bad_field"),
    ({"calibrated": 1}, "bad_field"), ({"crack_ratio": float("inf")}, "bad_number"),
]


@pytest.mark.parametrize("over, reason", REFUSED)
def test_the_encoder_and_the_decoder_refuse_the_same_headers(over: dict, reason: str) -> None:
    with pytest.raises(WireError) as sent:
        wire.encode_mask(mask_fields(**over), _png())
    assert sent.value.reason == reason
    good = wire.encode_mask(mask_fields(), _png())
    edited = {**json.loads(good[1]), **over}
    raw = json.dumps(edited, allow_nan=True).encode()
    topic = b"mask/" + str(edited["vehicle_id"]).encode()
    with pytest.raises(WireError) as received:
        wire.decode([topic, raw, good[2]])
    expected = "bad_number" if b"NaN" in raw or b"Infinity" in raw else reason  # refused by the JSON reader
    assert received.value.reason == expected, received.value


def test_a_missing_required_field_is_named() -> None:
    h = mask_fields()
    del h["crack_count"]
    with pytest.raises(WireError, match="missing_field: crack_count"):
        MaskHeader(**h)
