"""Frames with a fix -> track points with chainage, surveyed intervals and ground cracks."""
from __future__ import annotations

from dataclasses import dataclass, field

from viewer.report.dedup import Crack
from viewer.report.ground import forward_span, road_to_world
from viewer.report.load import Frame
from viewer.report.track import LocalENU, haversine_m, heading_between


@dataclass
class Run:
    """One vehicle's run: its track (lat, lon, chainage), coverage intervals and crack observations."""
    key: str
    track: list[tuple[float, float, float]] = field(default_factory=list)
    covered: list[tuple[float, float, float]] = field(default_factory=list)   # (s0, s1, width_m)
    cracks: list[Crack] = field(default_factory=list)
    frames: int = 0
    frames_without_fix: int = 0


def survey(frames: list[Frame], enu: LocalENU) -> list[Run]:
    runs: dict[str, Run] = {}
    last: dict[str, tuple[float, float, float]] = {}   # key -> lat, lon, s
    fixed = [f for f in frames if f.position]
    for i, f in enumerate(frames):
        key = f"{f.vehicle}/{f.run}"
        run = runs.setdefault(key, Run(key))
        run.frames += 1
        p = f.position
        if p is None:
            run.frames_without_fix += 1
            continue
        lat, lon = float(p["lat"]), float(p["lon"])
        s = last[key][2] + haversine_m(last[key][0], last[key][1], lat, lon) if key in last else 0.0
        last[key] = (lat, lon, s)
        run.track.append((lat, lon, s))
        en = enu.to_en(lat, lon)
        heading = p.get("heading_deg")
        if heading is None:
            heading = _heading_from_neighbours(fixed, f, enu)
        g = f.header.get("ground") or {}
        y0, y1, width = forward_span(g.get("footprint_m"))
        if y1 > y0:
            run.covered.append((s + y0, s + y1, width))
        for c in f.header.get("cracks") or []:
            if c.get("centroid_m") is None or c.get("length_m") is None or heading is None:
                continue
            x, y = float(c["centroid_m"][0]), float(c["centroid_m"][1])
            e, n = road_to_world(x, y, en, float(heading))
            clat, clon = enu.to_latlon(e, n)
            run.cracks.append(Crack(e, n, s + y, y, c, f"{key}/{f.seq}", clat, clon))
    return list(runs.values())


def _heading_from_neighbours(fixed: list[Frame], f: Frame, enu: LocalENU) -> float | None:
    i = next(k for k, g in enumerate(fixed) if g is f)
    a, b = fixed[max(0, i - 1)], fixed[min(len(fixed) - 1, i + 1)]
    if a is b:
        return None
    pa, pb = a.position, b.position
    return heading_between(enu.to_en(pa["lat"], pa["lon"]), enu.to_en(pb["lat"], pb["lon"]))
