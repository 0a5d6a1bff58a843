"""Capture -> inference -> publish, overlapped in threads joined by bounded queues.

    capture thread --frames--> inference thread(s) --results--> publish thread --> PUB socket
                                                                      ^--- status headers (daemon tick)

A backend that runs several frames at once (``backend.parallel``, OpenVINO's streams) gets that
many inference threads, each with its own pre-processing buffers; they hand their results on in
the order the frames were taken, so masks are published in capture order all the same.

In "latest" mode a full queue drops its oldest item (counted), so a camera faster than the
model never builds latency; in "every" mode (files, folders) the producer waits instead, so
every frame is published in order.  The publish thread is the only user of the socket (ZeroMQ
sockets are not thread-safe); it sends with NOBLOCK, so a slow or absent viewer never blocks it.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import zmq

from edge import wire
from edge.capture import Captured
from edge.measure import measure_mask
from edge.processing import Preprocessor, threshold

log = logging.getLogger(__name__)

STAGES = ("capture", "preprocess", "infer", "postprocess", "encode", "publish")


class FrameQueue:
    """Bounded queue: ``drop_oldest`` makes put() never wait (latest wins), else put() waits."""

    def __init__(self, maxsize: int, drop_oldest: bool) -> None:
        self.items: collections.deque = collections.deque()
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self.dropped = 0
        self.cond = threading.Condition()

    def put(self, item: Any, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """False when given up because ``should_stop()`` turned true while waiting."""
        with self.cond:
            if self.drop_oldest:
                while len(self.items) >= self.maxsize:
                    self.items.popleft()
                    self.dropped += 1
            else:
                while len(self.items) >= self.maxsize:
                    if should_stop():
                        return False
                    self.cond.wait(0.1)
            self.items.append(item)
            self.cond.notify_all()
            return True

    def get(self, timeout: float) -> Any | None:
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
            if not self.items:
                return None
            item = self.items.popleft()
            self.cond.notify_all()
            return item

    def __len__(self) -> int:
        return len(self.items)


class StageTimes:
    """Recent per-stage durations in ms (bounded), for the heartbeat and the bench."""

    def __init__(self, keep: int = 512) -> None:
        self.ms: dict[str, collections.deque] = {s: collections.deque(maxlen=keep) for s in STAGES}
        self.latency: collections.deque = collections.deque(maxlen=keep)

    def add(self, stage: str, seconds: float) -> None:
        self.ms[stage].append(seconds * 1000.0)

    def mean(self, stage: str) -> float:
        d = self.ms[stage]
        return sum(d) / len(d) if d else 0.0

    def summary(self) -> dict[str, float]:
        return {s: round(self.mean(s), 3) for s in STAGES}


@dataclass
class Inferred:
    captured: Captured
    prob: np.ndarray          # [H, W] crack probability at inference resolution
    seen: np.ndarray          # the BGR image the model saw (for the optional JPEG)
    infer_ms: float


@dataclass
class PipelineIdentity:
    """What every header repeats: who, which run, which model."""
    vehicle_id: str
    run_id: str
    model_sha256: str
    threshold: float
    min_component_px: int
    frame_jpeg: bool
    jpeg_quality: int


@dataclass
class Counters:
    published: int = 0          # mask messages handed to the socket
    status_sent: int = 0
    drops_publish: int = 0      # EAGAIN on send
    record_errors: int = 0
    last_frame_index: int = -1
    last_size: tuple[int, int] = (0, 0)
    mask_bytes: collections.deque = field(default_factory=lambda: collections.deque(maxlen=256))


class Pipeline:
    """Owns the inference and publish threads; the capture side puts into :attr:`frames`."""

    def __init__(self, backend: Any, pre: Preprocessor, socket: zmq.Socket, ident: PipelineIdentity, *,
                 every_frame: bool, queue_size: int, max_frames: int = 0, recorder: Any = None,
                 wait_subscriber_s: float = 0.0, position: Any = None, ground: Any = None) -> None:
        self.backend = backend
        self.ground = ground      # edge.measure.Ground or None: measures in mm when set
        self._ground_refused: tuple[int, int] | None = None
        self.position = position  # edge.position.PositionSource or None: its at() never blocks
        self.pre = pre
        self.socket = socket
        self.ident = ident
        self.every_frame = every_frame
        self.max_frames = max_frames
        self.recorder = recorder
        self.wait_subscriber_s = wait_subscriber_s
        self.workers = max(1, int(getattr(backend, "parallel", 1) or 1))
        self.pres = [pre] + [pre.clone() for _ in range(self.workers - 1)]
        # One frame waiting, whatever the number of inference threads: in latest mode the next free
        # thread takes the newest frame, never one that waited behind another.
        self.frames = FrameQueue(1, drop_oldest=not every_frame)
        self.results = FrameQueue(queue_size, drop_oldest=not every_frame)
        self.times = StageTimes()
        self.counters = Counters()
        self.stop_event = threading.Event()
        self.done = threading.Event()          # max_frames published
        self.subscribed = threading.Event()    # a first subscription seen on the XPUB socket
        self.failure: BaseException | None = None
        self._status: list[wire.StatusHeader] = []
        self._status_lock = threading.Lock()
        self._last_status: wire.StatusHeader | None = None
        self.beats = {"inference": time.monotonic(), "publish": time.monotonic()}
        self.busy = {"inference": 0, "publish": 0}
        self._take_lock = threading.Lock()     # a frame and its ticket are taken together
        self._order = threading.Condition()    # results leave in ticket order
        self._tickets = {"taken": 0, "handed_on": 0}
        self.seq = {"mask": 0, "status": 0}
        self._socket_calls: list[Callable[[zmq.Socket], Any]] = []
        self.infer_threads = [threading.Thread(target=self._guard, args=("inference", self._infer_loop, i),
                                               name=f"inference-{i}" if self.workers > 1 else "inference",
                                               daemon=True) for i in range(self.workers)]
        self.publish_thread = threading.Thread(target=self._guard, args=("publish", self._publish_loop),
                                               name="publish", daemon=True)

    # ------------------------------------------------------------ control (daemon thread)

    @property
    def threads(self) -> list[threading.Thread]:
        return [*self.infer_threads, self.publish_thread]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def alive(self) -> bool:
        """Whether any pipeline thread still runs."""
        return any(t.is_alive() for t in self.threads)

    def put_frame(self, item: Captured, should_stop: Callable[[], bool]) -> bool:
        """The capture thread's sink."""
        return self.frames.put(item, lambda: should_stop() or self.stop_event.is_set())

    def send_status(self, header: wire.StatusHeader) -> None:
        """Queue a status heartbeat; the publish thread sends it within ~50 ms."""
        with self._status_lock:
            self._status = [header]  # an unsent older heartbeat is stale: replace it

    def call_on_socket(self, fn: Callable[[zmq.Socket], Any]) -> None:
        """Run ``fn(socket)`` on the publish thread, the socket's only user, within ~50 ms."""
        with self._status_lock:
            self._socket_calls.append(fn)

    def idle(self) -> bool:
        return not (len(self.frames) or len(self.results) or self.busy["inference"] or self.busy["publish"])

    def healthy(self, now: float, stall_s: float) -> bool:
        """Both threads alive and looping recently (the watchdog's criterion)."""
        return (all(t.is_alive() for t in self.threads)
                and all(now - b < stall_s for b in self.beats.values()))

    def stop(self, timeout: float) -> bool:
        """Stop both threads; True when they ended within ``timeout``."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        with self._order:
            self._order.notify_all()  # an inference thread waiting for its turn
        for t in self.threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        return not self.alive()

    @property
    def drops(self) -> dict[str, int]:
        return {"capture": self.frames.dropped, "inference": self.results.dropped,
                "publish": self.counters.drops_publish}

    # ------------------------------------------------------------ threads

    def _guard(self, name: str, loop: Callable[..., None], *args: Any) -> None:
        try:
            loop(*args)
        except BaseException as e:  # a dead pipeline thread must end the daemon, not hang it
            self.failure = e
            log.exception("pipeline thread died thread=%s", name)

    def _infer_loop(self, worker: int = 0) -> None:
        pre = self.pres[worker]
        while not self.stop_event.is_set():
            self.beats["inference"] = time.monotonic()
            with self._take_lock:
                item: Captured | None = self.frames.get(0.1)
                if item is None:
                    continue
                ticket = self._tickets["taken"]
                self._tickets["taken"] += 1
            self._set_busy(+1)
            try:
                t0 = time.perf_counter()
                self.times.add("capture", item.read_s)
                tensor, seen = pre(item.image)
                t1 = time.perf_counter()
                out = self.backend.infer(tensor)
                t2 = time.perf_counter()
                prob = pre.crop(out, seen)  # cut off the padding of 'native' size
                self.times.add("preprocess", t1 - t0)
                self.times.add("infer", t2 - t1)
                # The preprocessor reuses its buffer: keep a copy of what the model saw.
                keep_seen = seen.copy() if self.ident.frame_jpeg else seen[:0]
                if self._wait_turn(ticket):
                    self.results.put(Inferred(item, prob, keep_seen, (t2 - t1) * 1000.0), self.stop_event.is_set)
                    self._hand_on()
            finally:
                self._set_busy(-1)

    def _set_busy(self, step: int) -> None:
        with self._order:
            self.busy["inference"] += step

    def _wait_turn(self, ticket: int) -> bool:
        """Wait until every frame taken before this one was handed on; False when stopping."""
        with self._order:
            while self._tickets["handed_on"] != ticket:
                if self.stop_event.is_set() or self.failure is not None:
                    return False
                self.beats["inference"] = time.monotonic()
                self._order.wait(0.1)
            return True

    def _hand_on(self) -> None:
        with self._order:
            self._tickets["handed_on"] += 1
            self._order.notify_all()

    def _publish_loop(self) -> None:
        if self.wait_subscriber_s > 0:
            self._wait_subscriber()
        while True:
            self.beats["publish"] = time.monotonic()
            self._run_socket_calls()
            self._flush_status()
            self._drain_subscriptions()
            if self.stop_event.is_set() and not len(self.results):
                break
            item: Inferred | None = self.results.get(0.05)
            if item is None:
                continue
            self.busy["publish"] = 1
            try:
                self._publish_mask(item)
            finally:
                self.busy["publish"] = 0
        self._flush_status()
        if self.recorder is not None:
            self.recorder.close()

    def _wait_subscriber(self) -> None:
        deadline = time.monotonic() + self.wait_subscriber_s
        while time.monotonic() < deadline and not self.subscribed.is_set() and not self.stop_event.is_set():
            self.beats["publish"] = time.monotonic()
            self._flush_status()
            if self.socket.poll(50, zmq.POLLIN):
                self._drain_subscriptions()

    def _drain_subscriptions(self) -> None:
        # XPUB hands us (un)subscriptions; reading them keeps its queue empty and tells us a viewer came.
        while True:
            try:
                msg = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.subscribed.set()
                topic = msg[1:]
                if self._last_status is not None and (wire.STATUS_PREFIX.encode().startswith(topic)
                                                      or topic.startswith(wire.STATUS_PREFIX.encode())):
                    # A late joiner learns vehicle, model and frame size now, not at the next tick.
                    with self._status_lock:
                        if not self._status:
                            self._status = [self._last_status]

    def _send(self, frames: list[bytes]) -> bool:
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def _run_socket_calls(self) -> None:
        with self._status_lock:
            calls, self._socket_calls = self._socket_calls, []
        for fn in calls:
            fn(self.socket)

    def _flush_status(self) -> None:
        with self._status_lock:
            pending, self._status = self._status, []
        for header in pending:
            self._last_status = header
            header = header.replace(seq=self.seq["status"], t_publish=time.time())
            self.seq["status"] += 1
            frames = wire.encode_status(header)
            if self._send(frames):
                self.counters.status_sent += 1
            if self.recorder is not None:
                self._record(frames)

    def _publish_mask(self, item: Inferred) -> None:
        if self.max_frames and self.counters.published >= self.max_frames:
            return
        ident = self.ident
        t0 = time.perf_counter()
        mask = threshold(item.prob, ident.threshold)
        fh, fw = item.captured.image.shape[:2]
        measured = measure_mask(mask, ident.min_component_px, self._ground_for(fw, fh))
        m = measured.pixels
        t1 = time.perf_counter()
        png = wire.png_b64(mask)
        jpeg = wire.jpeg_b64(item.seen, ident.jpeg_quality) if ident.frame_jpeg else None
        h, w = mask.shape
        header = wire.MaskHeader(
            vehicle_id=ident.vehicle_id, run_id=ident.run_id, seq=self.seq["mask"],
            frame_index=item.captured.index, t_capture=item.captured.t_capture, t_publish=time.time(),
            infer_ms=round(item.infer_ms, 3), model_sha256=ident.model_sha256, width=w, height=h,
            crack_ratio=round(m.ratio, 6), crack_count=m.count, crack_length_px=m.length_px,
            crack_max_width_px=m.max_width_px, threshold=ident.threshold,
            # The camera's own size: the mask is at inference resolution (often square), and a
            # viewer needs this to show the picture with the road's true proportions.
            frame_width=int(fw), frame_height=int(fh),
            position=None if self.position is None else self.position.at(item.captured.t_capture,
                                                                          item.captured.t_media),
            has_frame=jpeg is not None,
            **measured.header_fields(),
        )
        frames = wire.encode_mask(header, png, jpeg)
        t2 = time.perf_counter()
        self.seq["mask"] += 1  # a gap in seq tells a viewer a message was lost after this point
        sent = self._send(frames)
        t3 = time.perf_counter()
        if not sent:
            self.counters.drops_publish += 1
        if self.recorder is not None:
            self._record(frames)
        self.times.add("postprocess", t1 - t0)
        self.times.add("encode", t2 - t1)
        self.times.add("publish", t3 - t2)
        self.times.latency.append((time.time() - item.captured.t_capture) * 1000.0)
        c = self.counters
        c.published += 1
        c.last_frame_index = item.captured.index
        c.last_size = (h, w)
        c.mask_bytes.append(sum(len(f) for f in frames))
        if self.max_frames and c.published >= self.max_frames:
            self.done.set()

    def _ground_for(self, frame_width: int, frame_height: int) -> Any:
        """The calibration, unless these frames are not the calibrated camera's (then pixels only,
        said once): a source that changed mode must not be measured in wrong millimetres."""
        if self.ground is None or self.ground.fits(frame_width, frame_height):
            return self.ground
        if self._ground_refused != (frame_width, frame_height):
            self._ground_refused = (frame_width, frame_height)
            log.error("event=ground_size_mismatch frame=%dx%d calibrated=%dx%d (measuring in pixels only; "
                      "recalibrate at this size)", frame_width, frame_height, *self.ground.image_size)
        return None

    def _record(self, frames: list[bytes]) -> None:
        from edge.recording import RecordingError

        try:
            self.recorder.write(frames, time.time())
        except RecordingError as e:
            # The live stream matters more than the recording: say it once, keep publishing.
            log.error("recording stopped error=%r (streaming continues)", str(e))
            self.counters.record_errors += 1
            self.recorder.close()
            self.recorder = None
