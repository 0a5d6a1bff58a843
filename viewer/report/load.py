"""Read recordings into mask observations, in seq order per (vehicle, run).

A recording holding backfilled masks (issue #17) is read with ``edge.recording.read_in_seq_order``,
the same reader replay uses, so a filled gap sits where it was published.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edge.recording import read_in_seq_order
from edge.wire import WireError, decode_header
from viewer.backfill import mask_key


@dataclass
class Frame:
    """One mask header with what the report needs; ``fix`` false when no usable position."""
    vehicle: str
    run: str
    seq: int
    header: Mapping[str, Any]   # an edge.headers.MaskHeader
    frames: list[bytes] = field(repr=False, default_factory=list)

    @property
    def position(self) -> Mapping[str, Any] | None:
        p = self.header.get("position")
        if isinstance(p, Mapping) and p.get("fix") and p.get("lat") is not None and p.get("lon") is not None:
            return p
        return None


def load_frames(paths: list[str | Path]) -> list[Frame]:
    """Every mask message of the recordings, sorted by vehicle, run and seq; bad messages skipped."""
    out: list[Frame] = []
    for path in paths:
        for rec in read_in_seq_order(path, mask_key):
            try:
                kind, vehicle, header = decode_header(rec.frames)
            except WireError:
                continue
            if kind == "mask":
                out.append(Frame(vehicle, str(header["run_id"]), int(header["seq"]), header, rec.frames))
    seen: set[tuple[str, str, int]] = set()
    unique = []
    for f in sorted(out, key=lambda f: (f.vehicle, f.run, f.seq)):
        if (f.vehicle, f.run, f.seq) not in seen:   # the same message recorded twice counts once
            seen.add((f.vehicle, f.run, f.seq))
            unique.append(f)
    return unique
