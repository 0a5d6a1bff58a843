"""The history service (issue #17): its messages, its server over real sockets, the viewer's backfill,
and the real daemon's ROUTER socket under CurveZMQ.

In-process cases use a real RecordingWriter on disk, the real HistoryIndex as its observer and
a real ROUTER/DEALER pair on loopback; the daemon cases run ``crack-edge run`` as a subprocess.
Every receive is bounded by a timeout.
"""
from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import history, security, wire
from edge.config import HistoryConfig
from edge.recording import RecordingWriter, read_in_seq_order, read_records
from viewer.backfill import Backfiller, SeqRanges, mask_key

pytestmark = pytest.mark.timeout(120)

RUN = "ab" * 16
VEHICLE = "van-7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mask_frames(seq: int, run: str = RUN, vehicle: str = VEHICLE) -> list[bytes]:
    m = np.zeros((8, 8), np.uint8)
    m[seq % 8, :] = 255
    header = {"vehicle_id": vehicle, "run_id": run, "seq": seq, "frame_index": seq, "t_capture": 1.7e9 + seq,
              "t_publish": 1.7e9 + seq + 0.1, "infer_ms": 1.0, "model_sha256": "0" * 64, "width": 8, "height": 8,
              "crack_ratio": 0.125, "crack_count": 1, "crack_length_px": 8.0, "crack_max_width_px": 1.0}
    return wire.encode_mask(header, wire.png_b64(m))


def status_frames(last: int | None, endpoint: str | None, run: str = RUN) -> list[bytes]:
    return wire.encode_status({"vehicle_id": VEHICLE, "run_id": run, "seq": 0, "t_publish": time.time(), "fps": 10.0,
                               "drops": {}, "source": {}, "backend": "onnxruntime", "model_sha256": "0" * 64,
                               "width": 8, "height": 8, "history": endpoint, "first_mask_seq": 0,
                               "last_mask_seq": last})


# ------------------------------------------------------------------ messages


def test_seq_ranges_merge_and_gaps():
    r = SeqRanges()
    for s in [0, 1, 2, 5, 6, 9, 3, 8, 7]:
        r.add(s)
    assert r.r == [[0, 3], [5, 9]]
    assert r.gaps(0, 12) == [(4, 4), (10, 12)]
    lost = SeqRanges()
    lost.add(10, 11)
    assert r.gaps(0, 12, lost) == [(4, 4), (12, 12)]
    r.add(4)
    assert r.r == [[0, 9]] and 4 in r and 10 not in r and r.count() == 10


def test_request_and_reply_round_trip():
    req = history.Request(7, RUN, 3, 90)
    assert history.decode_request(history.encode_request(req)) == req
    recs = [history.HistoryRecord(s, 1.7e9 + s, mask_frames(s)) for s in (3, 4, 6)]
    b = history.Batch(7, RUN, 3, 6, recs, [(5, 5, "rotated")], 7, 0, 100)
    back = history.decode_reply(history.encode_reply(b))
    assert [r.seq for r in back.records] == [3, 4, 6] and back.records[2].frames == recs[2].frames
    assert back.lost == [(5, 5, "rotated")] and back.next_seq == 7 and back.last_seq == 100


@pytest.mark.parametrize("frames, reason", [
    ([history.REQUEST], "frame_count"),
    ([b"nope", b"{}"], "bad_kind"),
    ([history.REQUEST, b"\xff\xfe"], "bad_json"),
    ([history.REQUEST, b"[1,2]"], "bad_json"),
    ([history.REQUEST, b"{\"v\":2}"], "unknown_version"),
    ([history.REQUEST, json.dumps({"v": 1, "id": 1, "run_id": RUN, "from_seq": 5, "to_seq": 4}).encode()], "bad_field"),
    ([history.REQUEST, json.dumps({"v": 1, "id": 1, "run_id": "x", "from_seq": 0, "to_seq": 4}).encode()], "bad_field"),
    ([history.REQUEST, json.dumps({"v": 1, "id": True, "run_id": RUN, "from_seq": 0, "to_seq": 4}).encode()], "bad_field"),
    ([history.REQUEST, b"{\"v\":1,\"id\":" + b"9" * 30 + b"}"], "bad_json"),
    ([history.REQUEST, b" " * 2000], "too_large"),
])
def test_malformed_requests_are_refused_by_reason(frames, reason):
    with pytest.raises(history.HistoryError) as e:
        history.decode_request(frames)
    assert e.value.reason == reason


@pytest.mark.parametrize("change, detail", [
    ({"v": 2}, "2"), ({"id": True}, "id=True"), ({"run_id": "x y"}, "run_id='x y'"),
    ({"from_seq": 5, "to_seq": 4}, "from_seq=5 to_seq=4"), ({"to_seq": "9"}, "from_seq=0 to_seq='9'"),
])
def test_request_and_reply_refuse_a_bad_head_alike(change, detail):
    # One check of the shared head for both messages: same reason, same field and value named.
    head = {"v": 1, "id": 1, "run_id": RUN, "from_seq": 0, "to_seq": 4, **change}
    reply = {**head, "next_seq": None, "first_seq": None, "last_seq": None, "lost": [], "records": []}
    errors = []
    for decode, kind, body in ((history.decode_request, history.REQUEST, head),
                               (history.decode_reply, history.REPLY, reply)):
        with pytest.raises(history.HistoryError) as e:
            decode([kind, json.dumps(body).encode()])
        errors.append(str(e.value))
    assert errors[0] == errors[1] and errors[0].endswith(": " + detail)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_decoders_raise_only_history_error(frames):
    for decode in (history.decode_request, history.decode_reply):
        for f in (frames, [history.REQUEST, *frames[1:]], [history.REPLY, *frames[1:]]):
            try:
                decode(f)
            except history.HistoryError:
                pass


def test_reply_that_lists_more_frames_than_it_carries_is_refused():
    b = history.Batch(1, RUN, 0, 1, [history.HistoryRecord(0, 1.0, mask_frames(0))], [], None, 0, 1)
    frames = history.encode_reply(b)
    with pytest.raises(history.HistoryError):
        history.decode_reply(frames[:-1])
    with pytest.raises(history.HistoryError):
        history.decode_reply(frames + [b"extra"])


# ------------------------------------------------------------------ server in process


class Vehicle:
    """A recording written through the history index, and the server on a loopback ROUTER."""

    def __init__(self, root: Path, n: int, batch_records: int = 64, **writer: Any) -> None:
        self.ctx = zmq.Context()
        self.index = history.HistoryIndex(RUN)
        self.writer = RecordingWriter(root / "vehicle", "edge", observer=self.index, **writer)
        self.frames = {}
        for s in range(n):
            self.publish(s)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.server = history.HistoryServer(self.ctx, HistoryConfig(endpoint=self.endpoint, batch_records=batch_records),
                                            self.index)
        self.server.open()
        self.server.start()

    def publish(self, seq: int) -> None:
        self.frames[seq] = mask_frames(seq)
        self.writer.write(self.frames[seq], 1.7e9 + seq)
        self.writer.write(status_frames(seq, None), 1.7e9 + seq)  # a status between masks is not indexed

    def close(self) -> None:
        self.server.stop()
        self.writer.close()
        self.ctx.term()


@pytest.fixture
def vehicle(tmp_path):
    made = []

    def make(n: int, **kw: Any) -> Vehicle:
        made.append(Vehicle(tmp_path, n, **kw))
        return made[-1]
    yield make
    for v in made:
        v.close()


def ask(ctx: zmq.Context, endpoint: str, frames: list[bytes], timeout: float = 5.0,
        sock: Any = None) -> list[bytes] | None:
    if sock is None:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(endpoint)
    sock.send_multipart(frames)
    return sock.recv_multipart() if sock.poll(int(timeout * 1000)) else None


def test_a_range_larger_than_the_batch_is_served_in_batches(vehicle, zmq_ctx):
    v = vehicle(50, batch_records=8)
    got, batches, nxt = {}, 0, 0
    sock = zmq_ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(v.endpoint)
    while nxt is not None:
        reply = ask(zmq_ctx, v.endpoint, history.encode_request(history.Request(batches, RUN, nxt, 49)), sock=sock)
        assert reply is not None, f"no reply for the batch from {nxt}"
        b = history.decode_reply(reply)
        assert len(b.records) <= 8 and not b.lost
        got.update({r.seq: r.frames for r in b.records})
        batches += 1
        nxt = b.next_seq
    assert batches == 7 and sorted(got) == list(range(50))
    assert all(got[s] == v.frames[s] for s in got), "a history record is not the published bytes"


def test_what_rotated_away_is_reported_lost(vehicle, zmq_ctx):
    v = vehicle(300, max_file_bytes=8192, max_total_bytes=32768)
    first, last = v.index.span()
    assert first is not None and first > 0 and last == 299, "the test needs the oldest files deleted"
    b = history.decode_reply(ask(zmq_ctx, v.endpoint, history.encode_request(history.Request(1, RUN, 0, 299))))
    assert b.lost[0] == (0, first - 1, "rotated")
    assert b.records[0].seq == first and b.records[0].frames == v.frames[first]
    assert b.first_seq == first and b.last_seq == 299


def test_unknown_run_and_future_seqs(vehicle, zmq_ctx):
    v = vehicle(5)
    other = "cd" * 16
    b = history.decode_reply(ask(zmq_ctx, v.endpoint, history.encode_request(history.Request(1, other, 0, 4))))
    assert b.lost == [(0, 4, "unknown_run")] and not b.records
    b = history.decode_reply(ask(zmq_ctx, v.endpoint, history.encode_request(history.Request(2, RUN, 10, 20))))
    assert not b.records and not b.lost and b.next_seq is None and b.last_seq == 4


def test_malformed_requests_get_nothing_and_the_server_keeps_serving(vehicle, zmq_ctx):
    v = vehicle(5)
    sock = zmq_ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(v.endpoint)
    for junk in ([b"x"], [history.REQUEST, b"{"], [history.REQUEST, b"{}", b"third"], [b"\x00" * 3000]):
        assert ask(zmq_ctx, v.endpoint, junk, timeout=0.3, sock=sock) is None
    reply = ask(zmq_ctx, v.endpoint, history.encode_request(history.Request(9, RUN, 0, 4)), sock=sock)
    assert reply is not None and len(history.decode_reply(reply).records) == 5
    assert v.server.refused and v.server.thread.is_alive()


# ------------------------------------------------------------------ the viewer's backfill in process


def test_backfill_fills_the_gaps_and_reports_what_is_lost(vehicle, tmp_path, caplog):
    n = 300
    v = vehicle(n, max_file_bytes=8192, max_total_bytes=65536)
    first, _ = v.index.span()
    assert 5 < first < n - 45, "the test needs the oldest files deleted and 45 masks after them"
    desk = RecordingWriter(tmp_path / "desk", "rec")
    bf = Backfiller(Backfiller.into(desk), ["tcp://127.0.0.1:5555"], stale_after_s=3.0)
    live = [s for s in range(n) if not first + 10 <= s < first + 40]  # a late start and a partition
    live = [s for s in live if s >= first - 5]
    for s in live:
        desk.write(v.frames[s], time.time())
        bf.observe(v.frames[s])
    bf.observe(status_frames(n - 1, v.endpoint))
    caplog.set_level(logging.INFO, logger="viewer.backfill")
    deadline = time.monotonic() + 20
    while bf.pending() and time.monotonic() < deadline:
        bf.tick()
        time.sleep(0.02)
    assert not bf.pending(), [t.missing() for t in bf.tracks.values()]
    bf.close()
    desk.close()
    recs = list(read_in_seq_order(tmp_path / "desk", mask_key))
    seqs = [mask_key(r.frames)[1] for r in recs]
    lost = set(range(0, first - 5))  # neither received live nor still on the vehicle
    assert seqs == [s for s in range(n) if s not in lost]
    assert all(r.frames == v.frames[mask_key(r.frames)[1]] for r in recs)
    assert sum(r.backfilled for r in recs) == 30
    lines = [r.getMessage() for r in caplog.records if "event=backfill_lost" in r.getMessage()]
    assert lines and f"from_seq=0 to_seq={first - 6}" in lines[0] and "reason=rotated" in lines[0]


def test_backfill_writes_nothing_that_is_not_the_mask_asked_for(tmp_path, zmq_ctx):
    """A reply carrying another vehicle's or another seq's mask is refused, not recorded."""
    router = zmq_ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    desk = RecordingWriter(tmp_path / "desk", "rec")
    bf = Backfiller(Backfiller.into(desk), ["tcp://127.0.0.1:5555"])
    bf.observe(mask_frames(5))
    bf.observe(status_frames(5, f"tcp://127.0.0.1:{port}"))
    bf.tick()
    assert router.poll(5000)
    ident, *req = router.recv_multipart()
    r = history.decode_request(req)
    assert (r.from_seq, r.to_seq) == (0, 4)
    forged = [history.HistoryRecord(0, 1.0, mask_frames(0, vehicle="van-8")),
              history.HistoryRecord(1, 1.0, mask_frames(2)),
              history.HistoryRecord(3, 1.0, mask_frames(3))]
    router.send_multipart([ident, *history.encode_reply(history.Batch(r.id, RUN, 0, 4, forged, [], None, 0, 5))])
    deadline = time.monotonic() + 5
    while bf.backfilled == 0 and time.monotonic() < deadline:
        bf.tick()
        time.sleep(0.02)
    bf.close()
    desk.close()
    backfilled = [mask_key(x.frames) for x in read_records(tmp_path / "desk") if x.backfilled]
    assert backfilled == [(RUN, 3)] and bf.bad_replies == 2


# ------------------------------------------------------------------ the real daemon


def daemon_args(model: Path, pub: str, hist: str, rec: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--backend", "onnxruntime", "--threads", "1", "--publish", pub,
            "--inference-size", "64x64", "--vehicle-id", VEHICLE, "--record", str(rec), "--history", hist, *extra]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    out = tmp_path / "keys"
    security.create_keys(out, ["alice", "mallory"])
    (out / "authorized").mkdir()
    shutil.copy(out / "viewers" / "alice.key", out / "authorized")
    return out


def dealer(ctx: zmq.Context, endpoint: str, keys: Path, name: str | None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if name is not None:
        security.load_client(keys / "daemon.key", keys / "viewers" / f"{name}.key_secret").apply(sock)
    sock.connect(endpoint)
    return sock


def first_status(ctx: zmq.Context, endpoint: str, keys: Path, pred, timeout: float = 60) -> dict:
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    security.load_client(keys / "daemon.key", keys / "viewers" / "alice.key_secret").apply(sub)
    sub.setsockopt(zmq.SUBSCRIBE, b"status/")
    sub.connect(endpoint)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if sub.poll(1000):
                _, _, h = wire.decode_header(sub.recv_multipart())
                if pred(h):
                    return h
    finally:
        sub.close()
    raise AssertionError("no status header as expected")


def test_daemon_history_is_secured_like_its_stream(student_onnx, make_video, edge_daemon, keys, tmp_path, zmq_ctx):
    clip = make_video("clip.mp4", 30, fps=20.0)
    pub, hist = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    d = edge_daemon(*daemon_args(student_onnx, pub, hist, tmp_path / "rec", "--source", str(clip), "--loop", "--pace"),
                    env={"CRACK_EDGE_SECURITY__SECRET_KEY": str(keys / "daemon.key_secret"),
                         "CRACK_EDGE_SECURITY__AUTHORIZED_KEYS": str(keys / "authorized"),
                         "CRACK_EDGE_HISTORY__BATCH_RECORDS": "8"})
    h = first_status(zmq_ctx, pub, keys, lambda h: (h.get("last_mask_seq") or 0) >= 20)
    assert h["history"] == hist and h["first_mask_seq"] == 0
    req = history.encode_request(history.Request(1, h["run_id"], 0, 20))
    # Refused peers: a key not authorised, a plaintext socket, and garbage from an authorised viewer.
    for name in ("mallory", None):
        assert ask(zmq_ctx, hist, req, timeout=2.0, sock=dealer(zmq_ctx, hist, keys, name)) is None, name
    alice = dealer(zmq_ctx, hist, keys, "alice")
    for junk in ([b"garbage"], [history.REQUEST, b"{\"v\":1}"], [history.REQUEST, b"\xff" * 900]):
        assert ask(zmq_ctx, hist, junk, timeout=1.0, sock=alice) is None
    assert d.proc.poll() is None, "the daemon died of a bad request"
    # Alice gets the range, in batches of 8, each mask as published (the daemon's own recording).
    got, nxt, batches = {}, 0, 0
    while nxt is not None:
        reply = ask(zmq_ctx, hist, history.encode_request(history.Request(batches, h["run_id"], nxt, 20)), sock=alice)
        assert reply is not None
        b = history.decode_reply(reply)
        assert len(b.records) <= 8
        got.update({r.seq: r.frames for r in b.records})
        nxt, batches = b.next_seq, batches + 1
    assert sorted(got) == list(range(21)) and batches == 3
    d.terminate()
    assert d.wait(15) == 0
    recorded = {mask_key(r.frames)[1]: r.frames for r in read_records(tmp_path / "rec") if mask_key(r.frames)}
    assert all(got[s] == recorded[s] for s in got)
    log = d.log()
    assert "event=history_request_refused" in log and "event=auth_refused" in log


def test_history_on_a_reachable_endpoint_without_keys_is_refused(student_onnx, edge_daemon, tmp_path):
    d = edge_daemon(*daemon_args(student_onnx, "tcp://127.0.0.1:5999", f"tcp://0.0.0.0:{free_port()}",
                                 tmp_path / "rec"))
    assert d.wait(60) == 78
    assert "0.0.0.0" in d.log() and "no keys are configured" in d.log()


def test_history_without_recording_is_a_config_error(student_onnx, edge_daemon, tmp_path):
    d = edge_daemon("--model", str(student_onnx), "--history", f"tcp://127.0.0.1:{free_port()}")
    assert d.wait(60) == 78
    assert "history.endpoint needs record.enabled" in d.log()


# ------------------------------------------------------------------ readers of a backfilled recording


def test_report_and_replay_read_a_backfilled_recording_in_seq_order(tmp_path):
    from viewer.report.load import load_frames

    w = RecordingWriter(tmp_path / "desk", "rec")
    for s in [0, 1, 2, 6, 7]:
        w.write(mask_frames(s), 1.7e9 + s)
    for s in [3, 4, 5, 6]:  # filled in later; 6 came twice
        w.write(mask_frames(s), 1.7e9 + s, backfilled=True)
    w.close()
    assert [f.seq for f in load_frames([tmp_path / "desk"])] == list(range(8))
    assert [mask_key(r.frames)[1] for r in read_in_seq_order(tmp_path / "desk", mask_key)] == list(range(8))


@pytest.mark.parametrize("field, value", [("history", 5), ("first_mask_seq", "0"), ("last_mask_seq", -1),
                                          ("last_mask_seq", True), ("history", "tcp://" + "x" * 300)])
def test_status_history_fields_are_checked(field, value):
    frames = status_frames(3, "tcp://127.0.0.1:5556")
    h = json.loads(frames[1])
    h[field] = value
    with pytest.raises(wire.WireError):
        wire.decode_header([frames[0], json.dumps(h).encode()])
    assert wire.decode_header(status_frames(None, None))[2]["history"] is None


def test_history_port_taken_is_unavailable(student_onnx, edge_daemon, tmp_path, zmq_ctx):
    taken = zmq_ctx.socket(zmq.ROUTER)
    taken.linger = 0
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    d = edge_daemon(*daemon_args(student_onnx, f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{port}",
                                 tmp_path / "rec"))
    assert d.wait(60) == 69
    assert f"history.endpoint=tcp://127.0.0.1:{port}: cannot bind" in d.log()


def test_after_the_recording_stopped_the_rest_is_lost_not_pending(vehicle, zmq_ctx):
    v = vehicle(5)
    v.server.recording = lambda: False  # what the daemon says once its recorder hit a full disk
    b = history.decode_reply(ask(zmq_ctx, v.endpoint, history.encode_request(history.Request(1, RUN, 3, 9))))
    assert [r.seq for r in b.records] == [3, 4] and b.lost == [(5, 9, "not_recorded")] and b.next_seq is None
    b = history.decode_reply(ask(zmq_ctx, v.endpoint, history.encode_request(history.Request(2, RUN, 7, 9))))
    assert not b.records and b.lost == [(7, 9, "not_recorded")]
