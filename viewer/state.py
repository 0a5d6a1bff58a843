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
from collections.abc import Mapping
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
    recovered: int = 0                          # drops filled in later from the vehicle's history
    position: dict[str, Any] | None = None      # the last mask's position (docs/protocol.md), as sent
    ground: dict[str, Any] | None = None        # the last mask's ground figures (None: not calibrated)
    track_speed_mps: float | None = None        # from the last two fixes, for sources that send no speed
    track_heading_deg: float | None = None      # likewise, clockwise from north


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
    recovered: int = 0                                  # of the drops, masks filled in from the vehicle's history
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
    fixes: deque[tuple[float, float, float]] = field(default_factory=lambda: deque(maxlen=2))  # t, lat, lon

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
            fix = _fix(h)
            if fix is not None and (not v.fixes or fix[0] > v.fixes[-1][0]):
                v.fixes.append(fix)
        else:
            v.statuses += 1
            v.status = h
        return v

    def on_backfilled(self, vehicle_id: str, run_id: str) -> None:
        """A mask missed live came back from the vehicle's history: a drop recovered (not painted)."""
        v = self.vehicles.get(vehicle_id)
        if v is not None and v.run_id == run_id:
            v.recovered += 1

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
                recovered=v.recovered,
                position=mh.position if mh is not None else None,
                ground=mh.ground if mh is not None else None,
                **_track_motion(v.fixes),
            ))
        return out


MAX_FIX_GAP_S = 10.0   # fixes further apart say nothing about the speed now


def _fix(header: dict[str, Any]) -> tuple[float, float, float] | None:
    """(t_capture, lat, lon) of a mask header's position when it has a sane fix."""
    p = header.get("position")
    if not isinstance(p, Mapping) or p.get("fix") is not True:
        return None
    vals = (header.get("t_capture"), p.get("lat"), p.get("lon"))
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in vals):
        return None
    t, lat, lon = (float(x) for x in vals)
    return (t, lat, lon) if -90 <= lat <= 90 and -180 <= lon <= 180 else None


def _track_motion(fixes: deque[tuple[float, float, float]]) -> dict[str, float | None]:
    """Speed and heading over ground from the last two fixes (for logs and receivers that send none)."""
    if len(fixes) < 2 or not 0 < fixes[1][0] - fixes[0][0] <= MAX_FIX_GAP_S:
        return {"track_speed_mps": None, "track_heading_deg": None}
    from viewer.report.track import haversine_m

    (t0, la0, lo0), (t1, la1, lo1) = fixes
    dist = haversine_m(la0, lo0, la1, lo1)
    p0, p1, dl = math.radians(la0), math.radians(la1), math.radians(lo1 - lo0)
    heading = math.degrees(math.atan2(math.sin(dl) * math.cos(p1),
                                      math.cos(p0) * math.sin(p1) - math.sin(p0) * math.cos(p1) * math.cos(dl))) % 360
    return {"track_speed_mps": dist / (t1 - t0), "track_heading_deg": heading if dist > 0.05 else None}


def _ms(seconds: float | None) -> float | None:
    """Seconds as ms; None when unknown or not finite (a t_publish of -1e308 is a valid number whose
    latency overflows, and frames.jsonl is standard JSON)."""
    if seconds is None:
        return None
    ms = seconds * 1000.0
    return ms if math.isfinite(ms) else None
