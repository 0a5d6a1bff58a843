"""Fuzzing the viewer's decode step: bad input is counted and skipped, it never raises.

Three angles: arbitrary frames; real messages with bytes flipped, frames dropped or added;
real headers with one field given a hostile value.  The number of cases that ran is printed in
the terminal summary ("viewer decoder fuzzing").
"""
from __future__ import annotations

import base64
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import wire
from viewer_testkit import FUZZ_COUNTS, Messages
from viewer.subscriber import Decoder

FUZZ = settings(max_examples=1500, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_GOOD = Messages(vehicle_id="fuzz", width=32, height=24)
GOOD_MASK = _GOOD.mask(7)
GOOD_MASK_NOFRAME = _GOOD.mask(8, with_frame=False)
GOOD_STATUS = _GOOD.status(9)
GOOD = [GOOD_MASK, GOOD_MASK_NOFRAME, GOOD_STATUS]


def _check(dec: Decoder, frames: list[bytes]) -> None:
    before = dec.accepted + dec.rejected_total
    msg = dec(frames)  # must not raise, whatever the input
    assert dec.accepted + dec.rejected_total == before + 1
    assert "decoder_error" not in dec.rejected, dec.rejected
    if msg is not None:
        assert msg.kind in ("mask", "status")
        if msg.kind == "mask":
            assert isinstance(msg.mask, np.ndarray)
            assert msg.mask.shape == (msg.header["height"], msg.header["width"])


def _count(name: str) -> None:
    FUZZ_COUNTS[name] = FUZZ_COUNTS.get(name, 0) + 1


def test_good_messages_decode() -> None:
    dec = Decoder()
    for frames in GOOD:
        assert dec(frames) is not None
    assert dec.accepted == 3 and not dec.rejected


DEC_RANDOM = Decoder()


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_arbitrary_frames(frames: list[bytes]) -> None:
    _count("arbitrary frames")
    _check(DEC_RANDOM, frames)


DEC_MUTATED = Decoder()


@FUZZ
@given(st.sampled_from(range(len(GOOD))), st.data())
def test_mutated_real_messages(which: int, data: st.DataObject) -> None:
    _count("mutated real messages")
    frames = [bytes(f) for f in GOOD[which]]
    op = data.draw(st.sampled_from(["flip", "drop", "add", "replace", "truncate", "png", "b64"]))
    i = data.draw(st.integers(0, len(frames) - 1))
    if op == "flip" and frames[i]:
        buf = bytearray(frames[i])
        for pos in data.draw(st.lists(st.integers(0, len(buf) - 1), min_size=1, max_size=8)):
            buf[pos] ^= data.draw(st.integers(1, 255))
        frames[i] = bytes(buf)
    elif op == "drop":
        del frames[i]
    elif op == "add":
        frames.insert(data.draw(st.integers(0, len(frames))), data.draw(st.binary(max_size=64)))
    elif op == "replace":
        frames[i] = data.draw(st.binary(max_size=200))
    elif op == "truncate":
        frames[i] = frames[i][:data.draw(st.integers(0, max(0, len(frames[i]) - 1)))]
    elif op == "png" and len(frames) >= 3:
        # Valid base64 around a broken or lying PNG.
        png = bytearray(base64.b64decode(frames[2]))
        cut = data.draw(st.integers(0, len(png)))
        tail = data.draw(st.binary(max_size=32))
        frames[2] = base64.b64encode(bytes(png[:cut]) + tail)
    elif op == "b64" and len(frames) >= 3:
        frames[2] = frames[2][:-4] + data.draw(st.sampled_from([b"!!!!", b"====", b"\xff\x00ab", b"a"]))
    _check(DEC_MUTATED, frames)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
DEC_FIELDS = Decoder()


@FUZZ
@given(st.sampled_from(range(len(GOOD))), st.data())
def test_hostile_header_fields(which: int, data: st.DataObject) -> None:
    _count("hostile header fields")
    frames = [bytes(f) for f in GOOD[which]]
    header = json.loads(frames[1])
    key = data.draw(st.sampled_from(sorted(header) + ["extra"]))
    if data.draw(st.booleans()):
        header[key] = data.draw(JSON_VALUES)
    else:
        header.pop(key, None)
    if data.draw(st.booleans()):
        # Sizes that are absurd, negative or lie about the PNG.
        header["width"] = data.draw(st.sampled_from([0, -1, 1, 31, 33, 10**6, 2**40]))
    frames[1] = json.dumps(header).encode()
    _check(DEC_FIELDS, frames)


def test_decoder_reaches_every_kind_of_rejection() -> None:
    """One hand-made message per reason, on a fresh decoder: the checks the fuzzers above aim at
    exist and are reachable.  (It used to read the fuzzers' decoders, so it passed or failed
    depending on which tests ran before it.)"""
    mask = [bytes(f) for f in GOOD_MASK]
    header = json.loads(mask[1])
    no_width = {k: v for k, v in header.items() if k != "width"}
    cases = {
        "frame_count": mask[:2],
        "bad_topic": [b"other/x", mask[1]],
        "bad_json": [mask[0], b"{", *mask[2:]],
        "bad_field": [mask[0], json.dumps({**header, "seq": "1"}).encode(), *mask[2:]],
        "missing_field": [mask[0], json.dumps(no_width).encode(), *mask[2:]],
        "bad_png": [*mask[:2], base64.b64encode(b"not a png at all, really"), mask[3]],
        "bad_base64": [*mask[:2], b"@@@@", mask[3]],
        "absurd_size": [mask[0], json.dumps({**header, "width": 10**6}).encode(), *mask[2:]],
        "bad_number": [mask[0], mask[1].replace(b'"infer_ms":5.0', b'"infer_ms":NaN'), *mask[2:]],
    }
    for reason, frames in cases.items():
        dec = Decoder()
        assert dec(frames) is None
        assert set(dec.rejected) == {reason}, (reason, dec.rejected)
