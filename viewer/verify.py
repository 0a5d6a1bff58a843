"""`crack-viewer verify RECORDING [--repair OUT]`: what each file of a recording holds, and a clean copy.

Each file gets one line: good records, damaged stretches (bytes skipped between good records),
a torn tail (a record cut off by a crash), and the state of its file header.  The exit status is
``exits.FAILURE`` when anything is damaged or unreadable (a torn tail alone is the normal end of
a crash and is reported, not failed), ``exits.OK`` otherwise.  ``--repair OUT`` writes every good
record (its bytes, receive time and backfilled flag) into a new recording folder OUT.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from common import exits
from edge.recording import RecordingError, RecordingWriter, recording_files, scan_file

log = logging.getLogger(__name__)


def verify(recording: Path, repair: Path | None = None, prefix: str = "rec") -> int:
    """Print one line per file and a total; returns the exit status (see the module's doc)."""
    files = recording_files(recording)  # RecordingNotFound: the caller's 66
    writer = _repair_writer(recording, repair, prefix) if repair is not None else None
    if writer == "refused":
        return exits.CANTCREAT
    totals = {"good": 0, "damaged": 0, "torn": 0, "bad_files": 0}
    try:
        for path in files:
            report = scan_file(path, (lambda r: writer.write(r.frames, r.t_recv, r.backfilled)) if writer else None)
            totals["good"] += report.good
            totals["damaged"] += report.damaged
            totals["torn"] += report.torn
            totals["bad_files"] += not report.clean
            print(f"{path} good={report.good} damaged={report.damaged} damaged_bytes={report.damaged_bytes} "
                  f"torn={report.torn} torn_bytes={report.torn_bytes} header={report.header}"
                  + (f" error={report.error!r}" if report.error else ""))
    except RecordingError as e:  # writing the repaired copy failed (disk full...)
        log.error("event=repair_failed out=%s error=%s", repair, e)
        return exits.IOERR
    finally:
        if writer:
            writer.close()
    verdict = "clean" if not totals["bad_files"] else "damaged"
    print(f"total files={len(files)} good={totals['good']} damaged={totals['damaged']} torn={totals['torn']} "
          f"bad_files={totals['bad_files']} verdict={verdict}"
          + (f" repaired_into={repair} written={writer.records}" if writer else ""))
    sys.stdout.flush()
    return exits.OK if not totals["bad_files"] else exits.FAILURE


def _repair_writer(recording: Path, out: Path, prefix: str) -> RecordingWriter | str:
    source = recording if recording.is_dir() else recording.parent
    if out.resolve() == source.resolve():
        log.error("event=repair_refused out=%s reason=%r", out, "OUT is the recording itself: choose a new folder")
        return "refused"
    if out.exists() and any(out.glob("*.crec")):
        log.error("event=repair_refused out=%s reason=%r", out, "OUT already holds a recording: choose a new folder")
        return "refused"
    return RecordingWriter(out, prefix, max_file_bytes=2**30, max_total_bytes=2**40)
