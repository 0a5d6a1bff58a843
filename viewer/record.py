"""`crack-viewer record`: every message, verbatim, with its receive time, into a rotated recording.

Nothing is changed before writing (a replay must give back the bytes received, bad ones too).
Unless ``--no-backfill``, the masks missed (link down, queue full, a late start, a restart onto
this folder) are asked for from the vehicle's history service and written in marked backfilled
(``viewer/backfill.py``).
"""
from __future__ import annotations

import asyncio
import logging
import time

from common import exits
from edge.recording import RecordingDiskFull, RecordingError, RecordingWriter
from edge.wire import MASK_PREFIX, STATUS_PREFIX
from viewer.backfill import Backfiller
from viewer.config import ViewerConfig
from viewer.subscriber import SubscriberApp

log = logging.getLogger(__name__)


class RecordOutputError(RecordingError):
    """``--out`` cannot be used at all (a file, not writable): nothing was recorded (exit 73, not 74)."""


class RecordApp(SubscriberApp):
    def __init__(self, cfg: ViewerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rcfg = cfg.record
        self.masks = 0
        self.statuses = 0
        self.other = 0

    def startup(self) -> None:
        assert self.rcfg.out is not None
        try:
            self.writer = RecordingWriter(self.rcfg.out, self.rcfg.prefix, int(self.rcfg.max_file_mb * 2**20),
                                          int(self.rcfg.max_total_mb * 2**20))
        except RecordingError as e:
            raise RecordOutputError(str(e)) from None
        self.backfill = Backfiller(Backfiller.into(self.writer), self.cfg.connect, self.cfg.client_curve(), self.cfg.stale_after_s,
                                   enabled=self.rcfg.backfill)
        self.backfill.load_existing(self.rcfg.out)
        self.t0 = time.monotonic()
        self.open_subscriber()
        log.info("event=record_started out=%s endpoints=%s", self.rcfg.out, ",".join(self.cfg.connect))

    async def main_loop(self) -> None:
        while not self.should_exit:
            await asyncio.sleep(0.05)
            try:
                self.backfill.tick()
            except RecordingError as e:  # the same end as a live write that fails
                log.error("event=record_failed out=%s error=%s", self.rcfg.out, e)
                self.exit_code = exits.IOERR
                self.should_exit = True
            if self.rcfg.duration is not None and time.monotonic() - self.t0 >= self.rcfg.duration:
                self.should_exit = True
            if self.receiver.done():
                exc = None if self.receiver.cancelled() else self.receiver.exception()
                if isinstance(exc, RecordingDiskFull):
                    log.error("event=record_disk_full out=%s error=%s", self.rcfg.out, exc)
                    self.exit_code = exits.IOERR
                elif isinstance(exc, RecordingError):
                    log.error("event=record_failed out=%s error=%s", self.rcfg.out, exc)
                    self.exit_code = exits.IOERR
                elif exc is not None:
                    log.error("event=receiver_stopped error=%r", exc)
                    self.exit_code = exits.FAILURE
                self.should_exit = True
            self.check_refused()

    async def shutdown(self) -> None:
        await self.close_subscriber()
        self.backfill.close()
        self.writer.close()
        log.info("event=record_summary out=%s messages=%d masks=%d statuses=%d other=%d backfilled=%d bytes=%d",
                 self.rcfg.out, self.writer.records, self.masks, self.statuses, self.other, self.backfill.backfilled,
                 self.writer.bytes_written)

    def on_frames(self, frames: list[bytes], t_wall: float) -> None:
        if self.should_exit:
            return
        self.writer.write(frames, t_wall)  # RecordingError ends the receiver; main_loop reports it
        self.backfill.observe(frames)
        topic = bytes(frames[0][:16]) if frames else b""
        if topic.startswith(MASK_PREFIX.encode()):
            self.masks += 1
        elif topic.startswith(STATUS_PREFIX.encode()):
            self.statuses += 1
        else:
            self.other += 1
        if self.rcfg.count is not None and self.writer.records >= self.rcfg.count:
            self.should_exit = True
