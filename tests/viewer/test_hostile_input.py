"""Hostile or careless input (issue #18): the decoder's contract, the viewer's bounded sizes, and
the small `watch` defects.  Each test failed on the code before its fix."""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from common import exits
from edge import images, wire
from edge.recording import read_records
from viewer.render import MAX_TILES, render_fleet, render_tile
from viewer.state import FleetState
from viewer_testkit import Messages, endpoint, run_cli


def _with_header(frames: list[bytes], raw: bytes) -> list[bytes]:
    return [frames[0], raw, *frames[2:]]


def _edit(frames: list[bytes], **fields: object) -> list[bytes]:
    header = json.loads(frames[1])
    header.update(fields)
    return _with_header(frames, json.dumps(header).encode())


GOOD = Messages(vehicle_id="van-1", width=32, height=24).mask(3)


@pytest.mark.parametrize("raw_value", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 5000])
def test_non_standard_or_huge_numbers_give_wire_error(raw_value: bytes) -> None:
    raw = GOOD[1].replace(b'"infer_ms":5.0', b'"infer_ms":' + raw_value)
    assert raw != GOOD[1]
    with pytest.raises(wire.WireError) as e:
        wire.decode(_with_header(GOOD, raw))
    assert e.value.reason == "bad_number"


def test_a_5000_digit_seq_is_a_wire_error_not_value_error() -> None:
    raw = GOOD[1].replace(b'"seq":3', b'"seq":' + b"1" * 5000)
    with pytest.raises(wire.WireError):
        wire.decode(_with_header(GOOD, raw))


@pytest.mark.parametrize("fields", [
    {"seq": 2**60}, {"seq": -1}, {"frame_index": 2**53}, {"run_id": "abc"}, {"run_id": "G" * 32},
    {"frame_width": 16384, "frame_height": 100}, {"frame_width": 0, "frame_height": 100},
    {"frame_width": "640"}, {"threshold": "high"}, {"cracks": [{}] * 33}, {"position": 5},
])
def test_documented_constraints_are_enforced(fields: dict) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(_edit(GOOD, **fields))


def test_vehicle_id_character_set_is_enforced() -> None:
    m = Messages(vehicle_id="van-1", width=32, height=24).mask(0)
    forged = "van-1\nevent=forged"
    frames = [b"mask/" + forged.encode(), m[1].replace(b'"van-1"', json.dumps(forged).encode()), *m[2:]]
    with pytest.raises(wire.WireError) as e:
        wire.decode(frames)
    assert "vehicle_id" in str(e.value)
    with pytest.raises(wire.WireError):  # and a sender cannot send it either
        Messages(vehicle_id="a b", width=8, height=8).mask(0)


def test_unknown_fields_are_still_tolerated() -> None:
    msg = wire.decode(_edit(GOOD, some_future_field={"x": [1, 2]}, position=None))
    assert msg.header["some_future_field"] == {"x": [1, 2]}


def _jpeg_declaring(width: int, height: int) -> bytes:
    real = base64.b64decode(GOOD[3])
    w, h = images.jpeg_size(real)
    sof = real.index(b"\xff\xc0")
    return real[:sof + 5] + struct.pack(">HH", height, width) + real[sof + 9:]


def test_jpeg_size_is_read_before_decoding_and_a_liar_is_dropped() -> None:
    assert images.jpeg_size(base64.b64decode(GOOD[3])) == (32, 24)
    liar = _jpeg_declaring(30000, 30000)
    msg = wire.decode([*GOOD[:3], base64.b64encode(liar)])
    assert msg.frame_jpeg is None and "30000x30000" in msg.frame_error
    assert msg.mask is not None  # the mask still counts
    with pytest.raises(images.ImageError):
        images.decode_jpeg(liar, 32, 24)


def test_one_huge_seq_does_not_count_a_million_drops() -> None:
    m = Messages(vehicle_id="v", width=16, height=16)
    state = FleetState()
    state.on_message(wire.decode(m.mask(5)), 0.0, 0.0)
    state.on_message(wire.decode(m.mask(5 + 10**9)), 0.0, 0.1)
    assert state.vehicles["v"].drops == 0
    state.on_message(wire.decode(m.mask(5 + 10**9 + 3)), 0.0, 0.2)
    assert state.vehicles["v"].drops == 2  # ordinary gaps still count


def test_silent_vehicles_are_forgotten_and_their_number_is_capped() -> None:
    state = FleetState(stale_after_s=1.0, forget_after_s=10.0, max_vehicles=5)
    for i in range(20):
        state.on_message(wire.decode(Messages(vehicle_id=f"v{i}", width=8, height=8).status(0)), 0.0, float(i))
    assert len(state.vehicles) == 5 and "v19" in state.vehicles
    state.tick(100.0)
    assert not state.vehicles


def test_tile_and_canvas_sizes_are_bounded_whatever_the_header_says() -> None:
    m = Messages(vehicle_id="v", width=8, height=8)
    state = FleetState()
    state.on_message(wire.decode(m.mask(0, frame_width=1, frame_height=wire.MAX_SIDE)), 0.0, 0.0)
    tile = render_tile(state.views(0.0)[0], 640)
    assert tile.shape[0] <= 640 * 2 + 200  # was 5.2 million rows (a 10 GB tile)
    for i in range(MAX_TILES * 4):
        state.on_message(wire.decode(Messages(vehicle_id=f"w{i}", width=8, height=8).mask(0)), 0.0, 0.0)
    canvas = render_fleet(state.views(0.0), 160)
    assert canvas.nbytes < 50 * 2**20


def test_an_oversized_frame_is_dropped_and_the_viewer_reconnects(cli, pub, tmp_path: Path) -> None:
    m = Messages(vehicle_id="van-1", width=16, height=16)
    rec = cli("record", "--connect", pub.endpoint, "--out", tmp_path / "rec", "--count", 4)
    pub.wait_new_subscription()
    pub.send(m.mask(0))
    pub.send([b"mask/van-1", b"{}", b"A" * (wire.MAX_FRAME_BYTES + 1024)])  # ZeroMQ drops the link
    # libzmq never reconnects after this protocol error by itself; the viewer does (was: silence for good).
    pub.wait_new_subscription(30)
    deadline = time.monotonic() + 20
    seq = 1
    while rec.p.poll() is None and time.monotonic() < deadline:
        pub.send(m.mask(seq))
        seq += 1
        time.sleep(0.05)
    assert rec.wait(10) == exits.OK, rec.err
    records = list(read_records(tmp_path / "rec"))
    sizes = [sum(len(f) for f in r.frames) for r in records]
    assert len(sizes) == 4 and max(sizes) < 2**20, sizes  # the oversized message was never held
    assert "event=reconnect" in rec.err and "zeromq_gave_up" in rec.err


def test_watch_out_on_a_file_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    r = run_cli("watch", "--connect", endpoint(), "--headless", "--out", f, "--duration", "1")
    assert r.returncode == exits.CANTCREAT, r.stderr
    assert "Traceback" not in r.stderr and "is not a folder" in r.stderr


def test_record_out_on_a_file_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    r = run_cli("record", "--connect", endpoint(), "--out", f, "--duration", "1")
    assert r.returncode == exits.CANTCREAT, r.stderr  # was 74, "writing failed part-way"
    assert "Traceback" not in r.stderr and "event=output_failed" in r.stderr and str(f) in r.stderr


def _watch_into(cli, pub, out: Path, seqs: range, count: int) -> None:
    viewer = cli("watch", "--connect", pub.endpoint, "--headless", "--out", out, "--count", count)
    pub.wait_subscriber()
    m = Messages(vehicle_id="van-1", width=16, height=16)
    for s in seqs:  # a burst: more than --count arrive before the viewer stops
        pub.send(m.mask(s))
    assert viewer.wait(30) == exits.OK, viewer.err


def test_count_is_exact_and_a_rerun_continues_numbering(cli, make_pub, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _watch_into(cli, make_pub(), out, range(0, 30), 3)
    assert len(list(out.glob("frame-*.png"))) == 3  # was 4 or more: the burst kept writing
    _watch_into(cli, make_pub(), out, range(0, 30), 2)
    lines = [json.loads(x) for x in (out / "frames.jsonl").read_text().splitlines()]
    assert [e["file"] for e in lines] == [f"frame-{i:06d}.png" for i in range(1, 6)]
    assert len(list(out.glob("frame-*.png"))) == 5  # no picture of the first run was replaced


def test_display_set_without_an_x_server_exits_no_display(tmp_path: Path) -> None:
    free = next(n for n in range(400, 500) if not os.path.exists(f"/tmp/.X11-unix/X{n}"))
    env = {"DISPLAY": f":{free}", "QT_QPA_PLATFORM": "", "WAYLAND_DISPLAY": ""}
    r = run_cli("watch", "--connect", endpoint(), "--duration", "1", env=env)
    assert r.returncode == exits.NO_DISPLAY, r.stderr
    assert "no X server" in r.stderr


SLOW_RECEIVER = r"""
import sys, threading, time, zmq
from viewer.sockets import subscriber
ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pub.setsockopt(zmq.SNDHWM, 100000)
pub.bind("tcp://127.0.0.1:0")
sub = subscriber(ctx, [pub.getsockopt_string(zmq.LAST_ENDPOINT)], rcvhwm=4)
time.sleep(0.3)
def flood():
    while True:
        try:
            pub.send(b"x" * 100000, zmq.NOBLOCK)
        except zmq.Again:
            pass
        time.sleep(0.001)
threading.Thread(target=flood, daemon=True).start()
for _ in range(2):  # busy for longer than the heartbeat timeout, with a full queue
    for _ in range(64):  # drain a bounded share: a fast reader would otherwise keep up with the flood forever
        if not sub.poll(10):
            break
        sub.recv()
    time.sleep(5)
print("survived", flush=True)
import os; os._exit(0)
"""


def test_a_slow_viewer_with_a_full_queue_is_not_aborted_by_libzmq() -> None:
    # With its own ZMTP heartbeat, a receiver busy past HEARTBEAT_TIMEOUT with a full queue made
    # libzmq 4.3 abort the process on reconnecting ("Assertion failed: _input_stopped", libzmq
    # #3937/#4767): found by tests/viewer/test_fuzz_process.py.  Receivers use TCP keepalive now.
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", SLOW_RECEIVER], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert r.returncode == 0 and "survived" in r.stdout, r.stderr[-2000:]


def test_an_extreme_but_valid_timestamp_does_not_stop_headless_watch(tmp_path: Path) -> None:
    # t_publish = -1e308 is a finite number the wire allows; its latency in ms overflowed to inf and
    # frames.jsonl (standard JSON) refused it, which stopped the receiver (found by the process fuzz).
    from viewer.headless import HeadlessSink

    m = Messages(vehicle_id="v", width=8, height=8)
    state = FleetState()
    state.on_message(wire.decode(m.mask(0, t_publish=-1e308, t_capture=-1e308)), time.time(), 0.0)
    views = state.views(0.0)
    assert views[0].latency_publish_ms is None and views[0].latency_capture_ms is None
    sink = HeadlessSink(tmp_path / "out")
    sink.write(render_fleet(views, 160), views, "mask/v/0", time.time())
    sink.close()
    assert json.loads((tmp_path / "out" / "frames.jsonl").read_text())["vehicles"][0]["latency_publish_ms"] is None
