"""Sources of frames, chosen by URI, and the thread that reads one.

* :func:`parse_source` turns a URI into a :class:`SourceSpec` (camera index or ``/dev/videoN``,
  GStreamer pipeline, ``rtsp://`` and other network URLs, video file, folder of images).
* :func:`open_reader` opens it; ``Reader.read()`` answers (status, frame) and never loops forever.
* :class:`CaptureThread` only opens, reads and puts; it never decides to reconnect.
* :class:`SourceSupervisor` is driven by the daemon's tick: it notices a failed, finished or hung
  reader, abandons a hung one (its read cannot be interrupted from outside; the FFmpeg read timeout
  ends it later) and starts a new reader after a doubling backoff.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np

from edge.config import SourceConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
NETWORK_SCHEMES = {"rtsp", "rtsps", "rtmp", "http", "https", "tcp", "udp", "srt", "rtp"}
LIVE_KINDS = {"v4l2", "gstreamer", "network"}
# Abandoned readers still blocked in a read; beyond this many no new reader is started.
MAX_STUCK_READERS = 4
# FFmpeg ends a stalled network read itself after read_timeout_s; a read still blocked this many
# times longer (a V4L2 driver, a GStreamer pipeline) is abandoned by the supervisor.
ABANDON_FACTOR = 1.5


class SourceError(Exception):
    """The source cannot be opened or has failed; the supervisor will retry it."""


@dataclass(frozen=True)
class SourceSpec:
    uri: str
    kind: str            # v4l2 | gstreamer | network | file | folder
    target: str | int    # what cv2.VideoCapture or the folder reader gets

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS


def parse_source(uri: str) -> SourceSpec:
    """Choose the kind of source from its URI (see SourceConfig.uri)."""
    u = uri.strip()
    if not u:
        raise ValueError("empty source URI")
    if "!" in u:
        return SourceSpec(uri, "gstreamer", u)
    if re.fullmatch(r"\d+", u):
        return SourceSpec(uri, "v4l2", int(u))
    if u.startswith("v4l2://"):
        u = u[len("v4l2://"):]
        return SourceSpec(uri, "v4l2", int(u) if u.isdigit() else u)
    if u.startswith("/dev/video"):
        return SourceSpec(uri, "v4l2", u)
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", u)
    if m:
        scheme = m.group(1).lower()
        if scheme == "file":
            u = u[len("file://"):]
        elif scheme in NETWORK_SCHEMES:
            return SourceSpec(uri, "network", u)
        else:
            raise ValueError(f"unknown scheme {scheme!r} in source {uri!r}")
    p = Path(u).expanduser()
    # A path that does not exist yet (a USB stick not mounted) is judged by its name.
    if p.is_dir() or u.endswith("/") or (not p.exists() and not p.suffix):
        return SourceSpec(uri, "folder", str(p))
    return SourceSpec(uri, "file", str(p))


@dataclass
class Captured:
    index: int            # daemon-wide capture counter: gaps in published indices are drops
    t_capture: float      # epoch seconds when the read returned
    image: np.ndarray     # BGR uint8
    read_s: float = 0.0   # how long the read (decode) took
    # Where the frame lies in its file or folder, s from its start (None: a live source). A log of
    # positions is aligned by this, not by t_capture, which drifts from the clip when reading is slow.
    t_media: float | None = None


OK, SKIP, EOS = "ok", "skip", "eos"


class Reader(Protocol):
    fps: float | None
    t_media: float | None   # the last frame read: its time in the file (None for a live source)

    def read(self) -> tuple[str, np.ndarray | None]: ...

    def close(self) -> None: ...


class VideoReader:
    """cv2.VideoCapture for files, cameras, GStreamer and network streams."""

    def __init__(self, spec: SourceSpec, cfg: SourceConfig) -> None:
        self.spec = spec
        self.cfg = cfg
        self.failures = 0
        self.cap = self._open()
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else None
        self.count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if spec.kind == "file" else 0
        self.t_media: float | None = None

    def _open(self) -> cv2.VideoCapture:
        spec, cfg = self.spec, self.cfg
        if spec.kind == "file" and not os.path.isfile(spec.target):
            raise SourceError(f"{spec.target}: no such video file")
        if spec.kind == "gstreamer":
            if "GStreamer:                   YES" not in cv2.getBuildInformation():
                raise SourceError("this OpenCV build has no GStreamer support (use the system OpenCV on a Jetson)")
            cap = cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
        elif spec.kind == "v4l2":
            if isinstance(spec.target, str) and not os.path.exists(spec.target):
                raise SourceError(f"{spec.target}: no such camera device")
            cap = cv2.VideoCapture(spec.target, cv2.CAP_V4L2)
            if cfg.camera_size:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.camera_size[0])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.camera_size[1])
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not one queued seconds ago
        else:
            # FFmpeg's own timeouts make a stalled network read return instead of hanging forever.
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.read_timeout_s * 1000)]
            cap = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{spec.target}: cannot open {spec.kind} source")
        return cap

    def read(self) -> tuple[str, np.ndarray | None]:
        ok, frame = self.cap.read()
        if ok and frame is not None and frame.size:
            self.failures = 0
            self.t_media = self._media_time()
            return OK, frame
        self.failures += 1
        if self.spec.kind != "file":
            raise SourceError(f"{self.spec.target}: read failed (camera or stream gone)")
        pos = int(self.cap.get(cv2.CAP_PROP_POS_FRAMES))
        if self.count and pos < self.count - 1 and self.failures < self.cfg.max_unreadable:
            self.cap.grab()  # step over the damaged frame
            return SKIP, None
        if not self.cfg.loop:
            return EOS, None
        # Reopen rather than seek: the file may have been replaced (or removed) meanwhile.
        self.cap.release()
        self.cap = self._open()
        self.failures = 0
        ok, frame = self.cap.read()
        if not ok or frame is None:
            raise SourceError(f"{self.spec.target}: no frame after restarting the file")
        self.t_media = self._media_time()  # from 0 again: a looped clip passes the same places again
        return OK, frame

    def _media_time(self) -> float | None:
        """The frame just read: its presentation time in the file (s), None for a live source.

        FFmpeg's POS_MSEC after a read is that frame's timestamp (0 for the first; variable frame
        rates kept); where a backend has none, the frame's index over the file's rate.
        """
        if self.spec.kind != "file":
            return None
        ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
        pos = self.cap.get(cv2.CAP_PROP_POS_FRAMES)
        return max(0.0, pos - 1) / self.fps if self.fps and math.isfinite(pos) else None

    def close(self) -> None:
        self.cap.release()


class FolderReader:
    """The images of a folder in name order; the listing is refreshed at each pass."""

    def __init__(self, spec: SourceSpec, cfg: SourceConfig) -> None:
        self.folder = Path(spec.target)
        self.cfg = cfg
        self.fps = cfg.fps or 10.0
        self.files = self._list()
        self.pos = 0
        self.t_media: float | None = None

    def _list(self) -> list[Path]:
        try:
            names = sorted(e.name for e in os.scandir(self.folder) if e.is_file())
        except FileNotFoundError:
            raise SourceError(f"{self.folder}: no such folder") from None
        except OSError as e:
            raise SourceError(f"{self.folder}: cannot list folder: {e.strerror}") from None
        files = [self.folder / n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise SourceError(f"{self.folder}: no images in folder")
        return files

    def read(self) -> tuple[str, np.ndarray | None]:
        if self.pos >= len(self.files):
            if not self.cfg.loop:
                return EOS, None
            self.files = self._list()
            self.pos = 0
        path = self.files[self.pos]
        self.pos += 1
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is not None:
            self.t_media = (self.pos - 1) / self.fps  # the folder is a clip at fps (as --pace reads it)
            return OK, frame
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: folder vanished")
        return SKIP, None  # unreadable (or removed since listing): counted, skipped

    def close(self) -> None:
        self.files = []


def open_reader(spec: SourceSpec, cfg: SourceConfig) -> Reader:
    if spec.kind == "folder":
        return FolderReader(spec, cfg)
    return VideoReader(spec, cfg)


class CaptureThread(threading.Thread):
    """Opens one reader and feeds frames to ``put`` until stopped, finished or failed."""

    def __init__(self, spec: SourceSpec, cfg: SourceConfig, put: Callable[[Captured, Callable[[], bool]], bool],
                 counter: "itertools.count[int]", generation: int,
                 opener: Callable[[SourceSpec, SourceConfig], Reader] = open_reader) -> None:
        super().__init__(name=f"capture-{generation}", daemon=True)
        self.spec, self.cfg, self.put, self.counter, self.opener = spec, cfg, put, counter, opener
        self.stop_event = threading.Event()
        self.abandoned = False
        self.started_at = time.monotonic()
        self.opened_at: float | None = None
        self.read_since: float | None = None   # set while blocked in read()
        self.frames = 0
        self.unreadable = 0
        self.eos = False
        self.error: str | None = None
        self.fps: float | None = None

    def should_stop(self) -> bool:
        return self.stop_event.is_set() or self.abandoned

    def run(self) -> None:
        reader: Reader | None = None
        try:
            reader = self.opener(self.spec, self.cfg)
            self.opened_at = time.monotonic()
            self.fps = reader.fps
            self._loop(reader)
        except SourceError as e:
            self.error = str(e)
        except Exception as e:  # OpenCV raises cv2.error and others from its backends
            self.error = f"{type(e).__name__}: {e}"
            log.exception("capture thread failed uri=%s", self.spec.uri)
        finally:
            if reader is not None:
                try:
                    reader.close()
                except Exception as e:  # closing a dead camera may fail; nothing more to do
                    log.debug("close failed uri=%s error=%s", self.spec.uri, e)

    def _loop(self, reader: Reader) -> None:
        pace = self.cfg.pace and not self.spec.live
        period = 1.0 / (self.cfg.fps or reader.fps or 10.0) if pace else 0.0
        next_at = time.monotonic()
        unreadable_run = 0
        while not self.should_stop():
            if pace:
                delay = next_at - time.monotonic()
                if delay > 0 and self.stop_event.wait(delay):
                    return
                next_at = max(next_at + period, time.monotonic() - period)
            self.read_since = started = time.monotonic()
            status, frame = reader.read()
            self.read_since = None
            if self.abandoned:
                return
            if status == EOS:
                self.eos = True
                return
            if status == SKIP:
                self.unreadable += 1
                unreadable_run += 1
                if unreadable_run >= self.cfg.max_unreadable:
                    raise SourceError(f"{unreadable_run} unreadable frames in a row")
                continue
            unreadable_run = 0
            self.frames += 1
            item = Captured(next(self.counter), time.time(), frame, time.monotonic() - started, reader.t_media)
            if not self.put(item, self.should_stop):
                return


class SourceSupervisor:
    """Keeps one capture thread running; every decision is taken in :meth:`tick` (the daemon's)."""

    def __init__(self, spec: SourceSpec, cfg: SourceConfig, put: Callable[[Captured, Callable[[], bool]], bool],
                 opener: Callable[[SourceSpec, SourceConfig], Reader] = open_reader) -> None:
        self.spec, self.cfg, self.put, self.opener = spec, cfg, put, opener
        self.counter = itertools.count()
        self.thread: CaptureThread | None = None
        self.stuck: list[CaptureThread] = []
        self.state = "idle"
        self.reconnects = 0
        self.attempts = 0
        self.last_error = ""
        self.backoff = cfg.reconnect_min_s
        self.retry_at: float | None = None
        self.frames_before = 0       # frames and unreadable counts of finished threads
        self.unreadable_before = 0
        self.fps: float | None = None

    def start(self, now: float | None = None) -> None:
        self._launch(time.monotonic() if now is None else now)

    def _launch(self, now: float) -> None:
        self.attempts += 1
        if self.attempts > 1:
            self.reconnects += 1
        self.thread = CaptureThread(self.spec, self.cfg, self.put, self.counter, self.attempts, self.opener)
        self.state = "connecting"
        self.thread.start()

    def _retire(self, t: CaptureThread) -> None:
        self.frames_before += t.frames
        self.unreadable_before += t.unreadable

    def _fail(self, now: float, reason: str) -> None:
        if reason != self.last_error or self.state != "retrying":
            log.warning("source failed uri=%s reason=%r retry_in=%.1fs", self.spec.uri, reason, self.backoff)
        self.last_error = reason
        self.state = "retrying"
        self.retry_at = now + self.backoff
        self.backoff = min(self.backoff * 2, self.cfg.reconnect_max_s)

    def tick(self, now: float) -> None:
        self.stuck = [t for t in self.stuck if t.is_alive()]
        t = self.thread
        if t is not None:
            if not t.is_alive():
                self._retire(t)
                self.thread = None
                if t.eos:
                    self.state = "eos"
                elif t.stop_event.is_set():
                    self.state = "stopped"
                else:
                    self._fail(now, t.error or "source ended")
            elif t.read_since is not None and now - t.read_since > ABANDON_FACTOR * self.cfg.read_timeout_s:
                self._abandon(t, now, f"read blocked for more than {ABANDON_FACTOR * self.cfg.read_timeout_s:g}s")
            elif t.opened_at is None and now - t.started_at > self.cfg.open_timeout_s:
                self._abandon(t, now, f"open took more than {self.cfg.open_timeout_s:g}s")
            elif t.frames and self.state != "ok":
                if self.state == "connecting" and self.attempts > 1:
                    log.info("source back uri=%s reconnects=%d", self.spec.uri, self.reconnects)
                self.state = "ok"
                self.backoff = self.cfg.reconnect_min_s
            if t.fps:
                self.fps = t.fps
        elif self.state == "retrying" and self.retry_at is not None and now >= self.retry_at:
            if len(self.stuck) >= MAX_STUCK_READERS:
                self.last_error = f"{len(self.stuck)} readers still blocked; waiting for them to end"
                self.retry_at = now + self.backoff
            else:
                self._launch(now)

    def _abandon(self, t: CaptureThread, now: float, reason: str) -> None:
        t.abandoned = True
        t.stop_event.set()
        self._retire(t)
        self.stuck.append(t)
        self.thread = None
        self._fail(now, reason)

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the reader to stop and wait a bounded time; a hung reader is left behind."""
        t = self.thread
        self.state = "stopped"
        self.retry_at = None
        if t is None:
            return
        t.stop_event.set()
        t.join(timeout)
        if t.is_alive():
            t.abandoned = True
            self.stuck.append(t)
        self._retire(t)
        self.thread = None

    @property
    def frames(self) -> int:
        return self.frames_before + (self.thread.frames if self.thread else 0)

    @property
    def unreadable(self) -> int:
        return self.unreadable_before + (self.thread.unreadable if self.thread else 0)

    @property
    def stuck_readers(self) -> int:
        return sum(1 for t in self.stuck if t.is_alive())

    def snapshot(self) -> dict:
        """The ``source`` object of the status heartbeat."""
        return {"uri": self.spec.uri, "kind": self.spec.kind, "state": self.state,
                "reconnects": self.reconnects, "last_error": self.last_error,
                "frames": self.frames, "unreadable": self.unreadable,
                "fps": round(self.fps, 3) if self.fps else None, "stuck_readers": self.stuck_readers}
