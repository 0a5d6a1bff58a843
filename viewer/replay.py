"""`crack-viewer replay`: publish a recording byte for byte, with its original timing.

A recording with backfilled records is replayed in seq order (``edge.recording.read_in_seq_order``),
so a replay after a partition is the whole run.  A damaged file in a folder is skipped with a
log line; the good files around it are replayed.  ``--loop`` on a recording without a single
record is refused (exit 65) instead of spinning.

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

from common import exits
from edge.recording import read_in_seq_order, recording_files
from viewer.backfill import mask_key
from viewer.config import ViewerConfig
from viewer.sockets import publisher

log = logging.getLogger(__name__)


class ReplayApp:
    def __init__(self, cfg: ViewerConfig) -> None:
        self.cfg = cfg.replay
        self.stop = threading.Event()
        self.sent = 0
        self.passes = 0
        self.skipped_files: set[str] = set()

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
            code = exits.OK
            while not self.stop.is_set():
                sent = self._one_pass()
                self.passes += 1
                if sent == 0 and not self.stop.is_set():
                    code = self._nothing_sent(len(files))
                    break
                if not self.cfg.loop:
                    break
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.sock.close()  # linger is bounded (Defaults.LINGER_MS): queued messages get that long
            self.ctx.term()
            log.info("event=replay_summary sent=%d passes=%d skipped_files=%d", self.sent, self.passes,
                     len(self.skipped_files))
        return code

    def _nothing_sent(self, files: int) -> int:
        """A pass without a record: every file damaged (65), or nothing recorded (65 with --loop, else 0)."""
        if self.skipped_files and len(self.skipped_files) == files:
            log.error("event=replay_nothing_readable file=%s skipped_files=%d", self.cfg.file, files)
            return exits.DATAERR
        if self.cfg.loop:
            log.error("event=replay_empty file=%s loop=true: a recording without records cannot loop", self.cfg.file)
            return exits.DATAERR
        log.warning("event=replay_empty file=%s", self.cfg.file)
        return exits.OK

    def _bad_file(self, path: object, error: Exception) -> None:
        if str(path) not in self.skipped_files:  # once per file, not once per --loop pass
            log.error("event=replay_file_skipped path=%s error=%s", path, error)
        self.skipped_files.add(str(path))

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()

    def _wait_subscriber(self) -> None:
        if self.cfg.wait_subscriber_s <= 0:
            return
        if self.sock.poll(int(self.cfg.wait_subscriber_s * 1000), zmq.POLLIN):
            log.info("event=subscriber_joined")
        else:
            log.info("event=no_subscriber waited_s=%.1f starting_anyway=true", self.cfg.wait_subscriber_s)

    def _one_pass(self) -> int:
        start = time.monotonic()
        t0: float | None = None
        sent = 0
        for rec in read_in_seq_order(self.cfg.file, mask_key, on_bad_file=self._bad_file):
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
                return sent
            self.sock.send_multipart(rec.frames)
            self.sent += 1
            sent += 1
        return sent

    def _drain_subscriptions(self) -> None:
        # XPUB queues (un)subscription messages; read them so they never pile up.
        while self.sock.poll(0, zmq.POLLIN):
            msg = self.sock.recv()
            log.debug("event=subscription sub=%s topic=%r", msg[:1] == b"\x01", msg[1:64])
