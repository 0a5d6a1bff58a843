"""What the viewer knows about each vehicle, updated message by message (no I/O, no drawing).

Figures per vehicle: receive rate of masks (fps), end-to-end latency (``t_publish`` -> now and
``t_capture`` -> now, wall clock), messages lost on the way (gaps in ``seq``), daemon restarts
(a new ``run_id``), staleness (no message of any kind, heartbeats included, for
``stale_after_s``), and the crack figures of the last mask.  ``views()`` hands the renderer an
immutable snapshot.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edge import wire

log = logging.getLogger(__name__)

FPS_WINDOW_S = 2.0
FORGET_AFTER_S = 600.0   # a vehicle silent this long is dropped from the state (and the screen)
MAX_VEHICLES = 64        # beyond this, the longest-silent vehicle is forgotten for a new one
# A seq jump larger than this in one run is not "that many masks lost" (a daemon cannot have sent
# them): it is counted as a resync, so one forged or corrupted seq cannot count a million drops.
MAX_SEQ_GAP = 10_000


@dataclass(frozen=True)
class VehicleView:
    """Everything the renderer draws for one vehicle; plain values, safe to hand to another thread."""
    vehicle_id: str
    run_id: str
    seq: int                      # of the last mask message (-1 before the first)
    masks: int
    fps: float
    latency_publish_ms: float | None
    latency_capture_ms: float | None
    infer_ms: float | None
    drops: int
    restarts: int
    stale: bool
    silent_s: float
    crack_ratio: float | None
    crack_length_px: float | None
    crack_max_width_px: float | None
    crack_count: int | None
    mask: np.ndarray | None = field(repr=False, default=None)
    frame_jpeg: bytes | None = field(repr=False, default=None)
    backend: str | None = None
    source_state: str | None = None
    frame_size: tuple[int, int] | None = None  # (W, H) of the camera frame, when the daemon says it


@dataclass
class VehicleState:
    vehicle_id: str
    first_seen: float
    last_seen: float
    run_id: str = ""
    seq: dict[str, int] = field(default_factory=dict)   # last seq per message kind
    masks: int = 0
    statuses: int = 0
    drops: int = 0
    restarts: int = 0
    stale: bool = False
    stale_events: int = 0
    mask_header: wire.MaskHeader | None = None
    mask: np.ndarray | None = None
    frame_jpeg: bytes | None = None
    status: wire.StatusHeader | None = None
    latency_publish_s: float | None = None
    latency_capture_s: float | None = None
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=256))

    def fps(self, now: float) -> float:
        recent = [t for t in self.arrivals if now - t <= FPS_WINDOW_S]
        if len(recent) < 2 or self.stale:
            return 0.0
        span = recent[-1] - recent[0]
        return (len(recent) - 1) / span if span > 0 else 0.0


class FleetState:
    """Per-vehicle state. ``now`` is monotonic seconds; ``t_wall`` the receive time (epoch)."""

    def __init__(self, stale_after_s: float = wire.Defaults.STALE_AFTER_S, forget_after_s: float = FORGET_AFTER_S,
                 max_vehicles: int = MAX_VEHICLES) -> None:
        self.stale_after_s = stale_after_s
        self.forget_after_s = forget_after_s
        self.max_vehicles = max_vehicles
        self.vehicles: dict[str, VehicleState] = {}
        self.forgotten = 0

    def on_message(self, msg: wire.Message, t_wall: float, now: float) -> VehicleState:
        h = msg.header  # checked by the decoder (edge/headers.py): types and ranges hold
        v = self.vehicles.get(msg.vehicle_id)
        if v is None:
            if len(self.vehicles) >= self.max_vehicles:
                self._forget(min(self.vehicles.values(), key=lambda x: x.last_seen), now, "max_vehicles")
            v = self.vehicles[msg.vehicle_id] = VehicleState(msg.vehicle_id, now, now, run_id=h["run_id"])
            log.info("event=vehicle_new vehicle=%s run_id=%s", v.vehicle_id, v.run_id)
        if v.stale:
            v.stale = False
            log.info("event=vehicle_resumed vehicle=%s silent_s=%.1f", v.vehicle_id, now - v.last_seen)
        v.last_seen = now
        if h["run_id"] != v.run_id:
            self._restart(v, h["run_id"], "run_id")
        self._track_seq(v, msg.kind, h["seq"])
        if msg.kind == "mask":
            v.masks += 1
            v.arrivals.append(now)
            v.mask_header, v.mask, v.frame_jpeg = h, msg.mask, msg.frame_jpeg
            v.latency_publish_s = t_wall - h["t_publish"]
            v.latency_capture_s = t_wall - h["t_capture"]
        else:
            v.statuses += 1
            v.status = h
        return v

    def _restart(self, v: VehicleState, run_id: str, why: str) -> None:
        v.restarts += 1
        log.info("event=vehicle_restarted vehicle=%s old_run_id=%s run_id=%s why=%s", v.vehicle_id, v.run_id, run_id, why)
        v.run_id = run_id
        v.seq.clear()

    def _track_seq(self, v: VehicleState, kind: str, seq: int) -> None:
        last = v.seq.get(kind)
        if last is not None:
            if seq > last + MAX_SEQ_GAP:
                log.warning("event=seq_jump vehicle=%s kind=%s from=%d to=%d (not counted as drops)",
                            v.vehicle_id, kind, last, seq)
            elif seq > last + 1:
                v.drops += seq - last - 1
                log.info("event=seq_gap vehicle=%s kind=%s lost=%d", v.vehicle_id, kind, seq - last - 1)
            elif seq <= last:
                # The same run starting over (a replay looping): a restart, not a negative drop.
                self._restart(v, v.run_id, f"seq {kind} {last}->{seq}")
        v.seq[kind] = seq

    def tick(self, now: float) -> list[str]:
        """Mark vehicles silent for ``stale_after_s`` as stale; returns those newly marked."""
        newly = []
        for v in [v for v in self.vehicles.values() if now - v.last_seen > self.forget_after_s]:
            self._forget(v, now, "silent")
        for v in self.vehicles.values():
            if not v.stale and now - v.last_seen > self.stale_after_s:
                v.stale = True
                v.stale_events += 1
                newly.append(v.vehicle_id)
                log.warning("event=vehicle_stale vehicle=%s silent_s=%.1f", v.vehicle_id, now - v.last_seen)
        return newly

    def _forget(self, v: VehicleState, now: float, why: str) -> None:
        del self.vehicles[v.vehicle_id]
        self.forgotten += 1
        log.info("event=vehicle_forgotten vehicle=%s silent_s=%.1f why=%s", v.vehicle_id, now - v.last_seen, why)

    def views(self, now: float) -> list[VehicleView]:
        """Snapshots sorted by vehicle id, with stale flags brought up to date."""
        self.tick(now)
        out = []
        for vid in sorted(self.vehicles):
            v = self.vehicles[vid]
            mh, status = v.mask_header, v.status
            src = status.source if status is not None else {}
            out.append(VehicleView(
                vehicle_id=vid, run_id=v.run_id, seq=v.seq.get("mask", -1), masks=v.masks,
                fps=v.fps(now),
                latency_publish_ms=_ms(v.latency_publish_s), latency_capture_ms=_ms(v.latency_capture_s),
                infer_ms=mh.infer_ms if mh is not None else None, drops=v.drops, restarts=v.restarts, stale=v.stale,
                silent_s=max(0.0, now - v.last_seen),
                crack_ratio=mh.crack_ratio if mh is not None else None, crack_length_px=mh.crack_length_px if mh is not None else None,
                crack_max_width_px=mh.crack_max_width_px if mh is not None else None,
                crack_count=mh.crack_count if mh is not None else None,
                mask=v.mask, frame_jpeg=v.frame_jpeg, backend=status.backend if status is not None else None,
                source_state=str(src["state"]) if "state" in src else None,
                # frame_width/height were range-checked (1..wire.MAX_SIDE) by the decoder.
                frame_size=(mh.frame_width, mh.frame_height) if mh is not None and mh.frame_width and mh.frame_height else None,
            ))
        return out


def _ms(seconds: float | None) -> float | None:
    """Seconds as ms; None when unknown or not finite (a t_publish of -1e308 is a valid number whose
    latency overflows, and frames.jsonl is standard JSON)."""
    if seconds is None:
        return None
    ms = seconds * 1000.0
    return ms if math.isfinite(ms) else None
