"""`crack-viewer replay`: publish a recording byte for byte, with its original timing.

The socket is an XPUB (a PUB that also reports subscriptions), so the replay can wait for its
first subscriber instead of sending into the void; subscribers see exactly a daemon's PUB.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import zmq

from edge.recording import read_records, recording_files
from viewer.config import ViewerConfig
from viewer.sockets import publisher

log = logging.getLogger(__name__)


class ReplayApp:
    def __init__(self, cfg: ViewerConfig) -> None:
        self.cfg = cfg.replay
        self.stop = threading.Event()
        self.sent = 0
        self.passes = 0

    def serve(self) -> int:
        assert self.cfg.file is not None
        files = recording_files(self.cfg.file)  # RecordingError names a missing file before binding
        self.ctx = zmq.Context()
        self.sock = publisher(self.ctx, self.cfg.bind, self.cfg.sndhwm)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            log.info("event=replay_started file=%s files=%d bind=%s speed=%g loop=%s",
                     self.cfg.file, len(files), self.cfg.bind, self.cfg.speed, self.cfg.loop)
            self._wait_subscriber()
            while not self.stop.is_set():
                self._one_pass()
                self.passes += 1
                if not self.cfg.loop:
                    break
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.sock.close()  # linger is bounded (Defaults.LINGER_MS): queued messages get that long
            self.ctx.term()
            log.info("event=replay_summary sent=%d passes=%d", self.sent, self.passes)
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()

    def _wait_subscriber(self) -> None:
        if self.cfg.wait_subscriber_s <= 0:
            return
        if self.sock.poll(int(self.cfg.wait_subscriber_s * 1000), zmq.POLLIN):
            log.info("event=subscriber_joined")
        else:
            log.info("event=no_subscriber waited_s=%.1f starting_anyway=true", self.cfg.wait_subscriber_s)

    def _one_pass(self) -> None:
        start = time.monotonic()
        t0: float | None = None
        for rec in read_records(self.cfg.file):
            if t0 is None:
                t0 = rec.t_recv
            due = start + max(0.0, rec.t_recv - t0) / self.cfg.speed
            while not self.stop.is_set():
                self._drain_subscriptions()
                left = due - time.monotonic()
                if left <= 0:
                    break
                self.stop.wait(min(left, 0.05))
            if self.stop.is_set():
                return
            self.sock.send_multipart(rec.frames)
            self.sent += 1

    def _drain_subscriptions(self) -> None:
        # XPUB queues (un)subscription messages; read them so they never pile up.
        while self.sock.poll(0, zmq.POLLIN):
            msg = self.sock.recv()
            log.debug("event=subscription sub=%s topic=%r", msg[:1] == b"\x01", msg[1:64])
