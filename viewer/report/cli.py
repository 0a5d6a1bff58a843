"""`crack-viewer report RECORDING... --out DIR [--segment-m 10]`.

Exit statuses (common.exits): OK, also for a recording without positions (the report is then
made in frame order, without a map, and says so on the page and in a warning line); NOINPUT for
a missing recording; DATAERR for a file that is not a recording or holds no mask; CANTCREAT for
an output folder that cannot be written.
"""
from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

from common import exits

log = logging.getLogger("viewer.report")


def run_report(recordings: list[str], out: str, segment_m: float = 10.0) -> int:
    from edge.recording import RecordingError, RecordingNotFound
    from viewer.report.dedup import dedup
    from viewer.report.load import load_frames
    from viewer.report.outputs import write_all
    from viewer.report.segments import segment_run
    from viewer.report.survey import survey
    from viewer.report.track import LocalENU

    if segment_m <= 0:
        print(f"crack-viewer report: --segment-m must be > 0, got {segment_m}", file=sys.stderr)
        return exits.USAGE
    try:
        for r in recordings:
            if not Path(r).exists():
                raise RecordingNotFound(f"{r}: no such recording")
        frames = load_frames(recordings)
    except RecordingNotFound as e:
        print(f"crack-viewer report: {e}", file=sys.stderr)
        return exits.NOINPUT
    except RecordingError as e:
        print(f"crack-viewer report: {e}", file=sys.stderr)
        return exits.DATAERR
    if not frames:
        print(f"crack-viewer report: no mask messages in {', '.join(recordings)}", file=sys.stderr)
        return exits.DATAERR
    log.info("event=report_loaded frames=%d", len(frames))
    outdir = Path(out)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"crack-viewer report: cannot create {outdir}: {e}", file=sys.stderr)
        return exits.CANTCREAT
    fixed = [f for f in frames if f.position]
    notes: list[str] = []
    segs, cracks = [], []
    if fixed:
        p = fixed[0].position
        runs = survey(frames, LocalENU(float(p["lat"]), float(p["lon"])))
        for run in runs:
            run.cracks = dedup(run.cracks)
            segs += segment_run(run, segment_m)
            cracks += run.cracks
            if run.frames_without_fix:
                notes.append(f"{run.key}: {run.frames_without_fix} of {run.frames} frames without a fix "
                             "(their stretches are marked not surveyed)")
        log.info("event=report_segments segments=%d cracks=%d", len(segs), len(cracks))
    else:
        notes.append("No positions in these recordings: the report is in frame order, without a map "
                     "(frames.csv); no segments or condition classes.")
        log.warning("event=report_no_positions frames=%d", len(frames))
        _frames_csv(outdir / "frames.csv", frames)
    try:
        write_all(outdir, segs, cracks, frames, notes, with_map=bool(fixed))
    except OSError as e:
        print(f"crack-viewer report: writing {outdir} failed: {e}", file=sys.stderr)
        return exits.IOERR
    log.info("event=report_done out=%s", outdir / "index.html")
    return exits.OK


def _frames_csv(path: Path, frames: list) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["vehicle", "run", "seq", "crack_ratio", "crack_length_px", "crack_max_width_px", "crack_count"])
        for f in frames:
            h = f.header
            w.writerow([f.vehicle, f.run, f.seq, h["crack_ratio"], h["crack_length_px"], h["crack_max_width_px"],
                        h["crack_count"]])
