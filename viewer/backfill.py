"""Gap filling from the vehicle's history service (issue #17) -- so far only the seq key readers share.

:func:`mask_key` tells a recording's reader where a mask belongs: ``(run_id, seq)``, or None for
any other message (statuses, undecodable bytes), so ``edge.recording.read_in_seq_order`` can put
backfilled masks back in their place.
"""
from __future__ import annotations

from edge import wire


def mask_key(frames: list[bytes]) -> tuple[str, int] | None:
    """``(run_id, seq)`` of a mask message, None for anything else (never raises)."""
    if not frames or not bytes(frames[0][:5]) == wire.MASK_PREFIX.encode():
        return None
    try:
        kind, _vehicle, header = wire.decode_header(frames)
    except Exception:  # noqa: BLE001 - a recording may hold any bytes; they keep their file position
        return None
    if kind != "mask" or not isinstance(header.get("run_id"), str) or not isinstance(header.get("seq"), int):
        return None
    return header["run_id"], header["seq"]
