"""The pipeline's threads in-process: real ONNX Runtime, real XPUB/SUB sockets, real unix socket.

Latest-frame-wins must account for every frame it skips (gaps in ``frame_index`` equal the drop
counters), and a stalled inference thread must stop the watchdog pings.
"""
from __future__ import annotations

import socket
import threading
import time
import uuid

import numpy as np
import pytest
import zmq

from edge.backends.base import create_backend
from edge.capture import Captured
from edge.pipeline import Pipeline, PipelineIdentity
from edge.processing import Preprocessor
from models.card import load_card


def make_pipeline(backend, card, sock, every: bool, **kw) -> Pipeline:
    ident = PipelineIdentity("van-7", uuid.uuid4().hex, card.sha256, 0.5, 5, False, 80)
    return Pipeline(backend, Preprocessor(card, (64, 64)), sock, ident, every_frame=every, queue_size=2, **kw)


@pytest.fixture
def ort_backend(student_onnx):
    card = load_card(student_onnx)
    b = create_backend("onnxruntime", student_onnx, card, threads=1)
    b.load()
    yield b, card
    b.close()


@pytest.fixture
def ov_streams(student_onnx):
    """OpenVINO with two streams: two inference threads whose frames may finish out of order."""
    pytest.importorskip("openvino")
    card = load_card(student_onnx)
    b = create_backend("openvino", student_onnx, card, precision="fp32", streams=2, threads=2)
    b.load()
    assert b.parallel == 2
    yield b, card
    b.close()


@pytest.fixture
def xpub(zmq_ctx):
    pub = zmq_ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    return pub, f"tcp://127.0.0.1:{port}"


@pytest.fixture(params=["onnxruntime", "openvino-2-streams"])
def any_backend(request):
    return request.getfixturevalue("ort_backend" if request.param == "onnxruntime" else "ov_streams")


def test_latest_mode_drops_are_all_counted(any_backend, xpub, subscriber):
    backend, card = any_backend
    pub, ep = xpub
    sub = subscriber(ep, topics=(b"mask/",))
    pipe = make_pipeline(backend, card, pub, every=False, wait_subscriber_s=5.0)
    pipe.start()
    assert pipe.subscribed.wait(5)
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    n = 200
    for i in range(n):  # a camera much faster than the model
        pipe.put_frame(Captured(i, time.time(), frame), lambda: False)
        time.sleep(0.001)
    deadline = time.monotonic() + 20
    while not pipe.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pipe.idle()
    got = [m.header["frame_index"] for m in sub.collect(n, timeout=2)]
    pipe.stop(2)
    assert got == sorted(got) and got[-1] == n - 1  # the newest frame is never the one dropped
    d = pipe.drops
    assert d["capture"] > 0
    assert n - len(got) == d["capture"] + d["inference"] + d["publish"]
    assert pipe.counters.published == len(got)


def test_a_file_frame_is_placed_on_the_log_by_its_time_in_the_clip(ort_backend, xpub, subscriber, tmp_path):
    # The second frame is read 100 s after the first (a very slow machine) but lies 0.5 s into the
    # clip: its header must say where the track is at 0.5 s, not 100 s past the log's end.
    from edge.config import PositionConfig
    from edge.position import open_position
    from tests.edge.gpstrack import T0, track, write_gpx

    backend, card = ort_backend
    pub, ep = xpub
    sub = subscriber(ep, topics=(b"mask/",))
    gpx = write_gpx(tmp_path / "drive.gpx", 3)
    log = open_position(PositionConfig(kind="gpx-log", path=gpx, start_time=T0), "clip.mp4")
    pipe = make_pipeline(backend, card, pub, every=True, wait_subscriber_s=5.0, position=log)
    pipe.start()
    assert pipe.subscribed.wait(5)
    frame, now = np.zeros((64, 96, 3), np.uint8), time.time()
    assert pipe.put_frame(Captured(0, now, frame, t_media=0.0), lambda: False)
    assert pipe.put_frame(Captured(1, now + 100.0, frame, t_media=0.5), lambda: False)
    got = sub.collect(2, timeout=20)
    pipe.stop(2)
    positions = [m.header["position"] for m in got]
    assert [p["fix"] for p in positions] == [True, True]
    assert [p["lat"] for p in positions] == pytest.approx([track(0.0)[0], track(0.5)[0]], abs=1e-7)


def test_two_inference_threads_publish_every_frame_in_capture_order(ov_streams, ort_backend, xpub, subscriber):
    """Every-frame mode with two streams: all frames, in order, each mask the one of its own frame."""
    backend, card = ov_streams
    pub, ep = xpub
    sub = subscriber(ep, topics=(b"mask/",))
    pipe = make_pipeline(backend, card, pub, every=True, wait_subscriber_s=5.0)
    assert len(pipe.infer_threads) == 2
    pipe.start()
    assert pipe.subscribed.wait(5)
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(4)]
    n = 24
    for i in range(n):
        assert pipe.put_frame(Captured(i, time.time(), frames[i % 4]), lambda: False)
    got = sub.collect(n, timeout=30)
    pipe.stop(2)
    assert [m.header["frame_index"] for m in got] == list(range(n))
    assert [m.header["seq"] for m in got] == list(range(n))
    # Each mask belongs to its own frame: the same frame gives the same mask as ONNX Runtime's.
    ref_backend, _ = ort_backend
    pre = Preprocessor(card, (64, 64))
    for m in got[:4]:
        want = ref_backend.infer(pre(frames[m.header["frame_index"] % 4])[0])[0, 0] > 0.5
        union = np.count_nonzero(want | (m.mask > 0))
        assert np.count_nonzero(want & (m.mask > 0)) / max(union, 1) >= 0.98


class StallingBackend:
    """Fault injection: a runtime whose forward pass hangs until released (a wedged GPU)."""

    name = "stalling"

    def __init__(self) -> None:
        self.release = threading.Event()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.release.wait()
        return np.zeros((1, 1, *batch.shape[2:]), np.float32)

    def describe(self) -> dict:
        return {"backend": self.name}


def test_a_stalled_pipeline_withholds_the_watchdog(student_onnx, xpub, tmp_path, monkeypatch):
    from edge.config import load_config
    from edge.daemon import Daemon

    card = load_card(student_onnx)
    path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(0.3)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    backend = StallingBackend()
    pipe = make_pipeline(backend, card, xpub[0], every=False)
    daemon = Daemon(load_config(None, {"pipeline": {"stall_s": 0.5}}))
    daemon.pipeline = pipe
    pipe.start()

    def pings(seconds: float) -> int:
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            daemon.watchdog(time.monotonic())
            try:
                n += listener.recv(64) == b"WATCHDOG=1"
            except socket.timeout:
                pass
        return n

    try:
        assert pings(0.6) >= 2  # idle but alive: pings flow
        pipe.put_frame(Captured(0, time.time(), np.zeros((64, 64, 3), np.uint8)), lambda: False)
        time.sleep(0.7)  # the inference thread is now stuck in infer() beyond stall_s
        assert not pipe.healthy(time.monotonic(), 0.5)
        assert pings(1.0) == 0
        backend.release.set()
        deadline = time.monotonic() + 5
        while not pipe.healthy(time.monotonic(), 0.5) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pings(0.6) >= 2
    finally:
        backend.release.set()
        pipe.stop(2)
        listener.close()
