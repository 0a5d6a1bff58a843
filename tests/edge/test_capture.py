"""Sources by URI, readers on real files, and the supervisor's reconnect and hang handling."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge.capture import (EOS, MAX_STUCK_READERS, OK, SKIP, FolderReader, SourceError, SourceSupervisor,
                          VideoReader, open_reader, parse_source)
from edge.config import SourceConfig
from edge.pipeline import FrameQueue


@pytest.mark.parametrize("uri, kind, target", [
    ("0", "v4l2", 0),
    ("/dev/video2", "v4l2", "/dev/video2"),
    ("v4l2:///dev/video1", "v4l2", "/dev/video1"),
    ("nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! appsink", "gstreamer",
     "nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! appsink"),
    ("rtsp://cam.local:554/stream1", "network", "rtsp://cam.local:554/stream1"),
    ("tcp://127.0.0.1:9000", "network", "tcp://127.0.0.1:9000"),
    ("/media/usb/run.mp4", "file", "/media/usb/run.mp4"),
    ("file:///media/usb/run.mp4", "file", "/media/usb/run.mp4"),
    ("/media/usb/frames/", "folder", "/media/usb/frames"),
    ("/media/usb/frames", "folder", "/media/usb/frames"),
])
def test_parse_source(uri, kind, target):
    spec = parse_source(uri)
    assert (spec.kind, spec.target) == (kind, target)
    assert spec.live == (kind in ("v4l2", "gstreamer", "network"))


def test_parse_source_refuses_unknown_scheme():
    with pytest.raises(ValueError, match="unknown scheme 'ftp'"):
        parse_source("ftp://x/y.mp4")


def read_all(reader, limit: int = 1000) -> list[str]:
    out = []
    for _ in range(limit):
        status, _ = reader.read()
        out.append(status)
        if status == EOS:
            break
    return out


def test_video_reader_ends_or_loops(small_video):
    r = VideoReader(parse_source(str(small_video)), SourceConfig(loop=False))
    assert r.fps == pytest.approx(20.0)
    statuses = read_all(r)
    assert statuses.count(OK) == 24 and statuses[-1] == EOS
    r.close()
    r = VideoReader(parse_source(str(small_video)), SourceConfig(loop=True))
    assert read_all(r, 60).count(OK) == 60
    r.close()


def test_file_and_folder_frames_carry_their_time_in_the_clip(small_video, make_images):
    # The time a position log is aligned by: the frame's place in the file, from 0 again on a loop.
    r = VideoReader(parse_source(str(small_video)), SourceConfig(loop=True))
    times = []
    for _ in range(26):
        assert r.read()[0] == OK
        times.append(r.t_media)
    r.close()
    assert times[:24] == pytest.approx([k / 20.0 for k in range(24)], abs=1e-3)
    assert times[24:] == pytest.approx([0.0, 0.05], abs=1e-3)
    f = FolderReader(parse_source(str(make_images("clip", 3))), SourceConfig(fps=4.0, loop=False))
    assert [f.read()[0] == OK and f.t_media for _ in range(3)] == [0.0, 0.25, 0.5]


def test_video_reader_missing_file(tmp_path):
    with pytest.raises(SourceError, match="no such video file"):
        VideoReader(parse_source(str(tmp_path / "gone.mp4")), SourceConfig())


def test_folder_reader_order_unreadable_and_vanishing(make_images, tmp_path):
    folder = make_images("f", 3)
    (folder / "frame_0001x.png").write_bytes(b"garbage")
    (folder / "notes.txt").write_text("ignored")
    r = FolderReader(parse_source(str(folder)), SourceConfig(loop=False))
    assert [p.name for p in r.files] == ["frame_0000.png", "frame_0001.png", "frame_0001x.png", "frame_0002.png"]
    assert read_all(r) == [OK, OK, SKIP, OK, EOS]
    r = FolderReader(parse_source(str(folder)), SourceConfig(loop=True))
    r.read()
    folder.rename(tmp_path / "elsewhere")
    with pytest.raises(SourceError, match="folder vanished"):
        r.read()
    with pytest.raises(SourceError, match="no such folder"):
        FolderReader(parse_source(str(folder)), SourceConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        FolderReader(parse_source(str(tmp_path / "empty")), SourceConfig())


def test_latest_wins_queue_counts_drops():
    q = FrameQueue(1, drop_oldest=True)
    for i in range(5):
        assert q.put(i)
    assert q.dropped == 4 and q.get(0.1) == 4 and q.get(0.01) is None


def test_every_frame_queue_waits_and_gives_up_on_stop():
    q = FrameQueue(1, drop_oldest=False)
    assert q.put(1)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    assert q.put(2, stop.is_set) is False
    assert 0.15 < time.monotonic() - t0 < 2 and q.dropped == 0 and len(q) == 1


def drive(sup: SourceSupervisor, until, timeout: float) -> bool:
    """Tick the supervisor as the daemon does, until a condition or a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.tick(time.monotonic())
        if until():
            return True
        time.sleep(0.02)
    return False


def test_supervisor_retries_a_missing_source_until_it_appears(make_images, tmp_path):
    target = tmp_path / "cam"
    q = FrameQueue(1, drop_oldest=True)
    sup = SourceSupervisor(parse_source(str(target)), SourceConfig(reconnect_min_s=0.05, reconnect_max_s=0.2), q.put)
    sup.start()
    assert drive(sup, lambda: sup.state == "retrying" and sup.reconnects >= 2, 5)
    assert "no such folder" in sup.last_error
    make_images("staging", 2).rename(target)
    assert drive(sup, lambda: sup.state == "ok", 5), sup.snapshot()
    assert q.get(1.0) is not None
    snap = sup.snapshot()
    assert snap["reconnects"] >= 2 and snap["frames"] >= 1 and snap["kind"] == "folder"
    sup.stop()
    assert sup.state == "stopped"


class BlockingReader:
    """Fault injection: a source whose read blocks until released (a camera that stops sending)."""

    def __init__(self, release: threading.Event) -> None:
        self.release, self.fps, self.calls = release, None, 0
        self.t_media = None  # a live stream

    def read(self):
        self.calls += 1
        if self.calls > 2:
            self.release.wait()
            raise SourceError("stream ended")
        return OK, np.zeros((8, 8, 3), np.uint8)

    def close(self) -> None:
        pass


def test_a_hung_read_is_abandoned_and_does_not_leak():
    release = threading.Event()
    q = FrameQueue(4, drop_oldest=True)
    cfg = SourceConfig(read_timeout_s=0.2, reconnect_min_s=0.05, reconnect_max_s=0.05)
    sup = SourceSupervisor(parse_source("rtsp://cam/stream"), cfg, q.put, opener=lambda s, c: BlockingReader(release))
    before = threading.active_count()
    sup.start()
    assert drive(sup, lambda: sup.stuck_readers >= MAX_STUCK_READERS, 10), sup.snapshot()
    assert "read blocked" in sup.last_error
    # Capped: no more readers are started while that many are still blocked.
    assert not drive(sup, lambda: sup.stuck_readers > MAX_STUCK_READERS, 1.0)
    assert threading.active_count() <= before + MAX_STUCK_READERS + 1
    release.set()  # the blocked reads return (as FFmpeg's read timeout makes them do)
    assert drive(sup, lambda: sup.stuck_readers == 0, 5)
    sup.stop()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() == before
    assert sup.frames >= 2


def test_open_reader_dispatches(small_video, image_folder):
    assert isinstance(open_reader(parse_source(str(image_folder)), SourceConfig()), FolderReader)
    r = open_reader(parse_source(str(small_video)), SourceConfig())
    assert isinstance(r, VideoReader)
    r.close()
