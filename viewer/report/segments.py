"""Cut each run's chainage into segments and give each its figures and condition class.

Condition (US FHWA rule for asphalt cracking percent): good < 5 %, fair 5-20 %, poor > 20 %.
A segment is "not surveyed" when frames on the ground cover under ``min_cover`` of its length
(no fix, or no frames): never "good".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from viewer.report.survey import Run


@dataclass
class Segment:
    run: str
    s0: float
    s1: float
    covered_m: float = 0.0
    surveyed_area_m2: float = 0.0
    crack_length_m: float = 0.0
    crack_area_m2: float = 0.0
    max_width_mm: float = 0.0
    types: dict[str, int] = field(default_factory=dict)
    severities: dict[str, int] = field(default_factory=dict)
    condition: str = "not surveyed"
    coords: list[tuple[float, float]] = field(default_factory=list)   # (lon, lat)

    @property
    def cracked_pct(self) -> float | None:
        return 100 * self.crack_area_m2 / self.surveyed_area_m2 if self.surveyed_area_m2 > 0 else None

    def row(self) -> dict[str, Any]:
        pct = self.cracked_pct
        return {"run": self.run, "from_m": round(self.s0, 2), "to_m": round(self.s1, 2),
                "condition": self.condition, "cracked_pct": None if pct is None else round(pct, 3),
                "crack_length_m": round(self.crack_length_m, 3), "crack_area_m2": round(self.crack_area_m2, 4),
                "max_width_mm": round(self.max_width_mm, 2), "surveyed_area_m2": round(self.surveyed_area_m2, 3),
                "covered_m": round(self.covered_m, 2),
                **{f"n_{t}": self.types.get(t, 0) for t in ("longitudinal", "transverse", "alligator")},
                **{f"n_{s}": self.severities.get(s, 0) for s in ("low", "medium", "high")}}


def condition(pct: float | None) -> str:
    if pct is None:
        return "not surveyed"
    return "good" if pct < 5 else "fair" if pct <= 20 else "poor"


def _union(intervals: list[tuple[float, float, float]], a: float, b: float) -> tuple[float, float]:
    """Covered length of [a, b] and the covered area (length x the widest footprint over it)."""
    parts = sorted((max(a, s0), min(b, s1), w) for s0, s1, w in intervals if s1 > a and s0 < b)
    length = area = 0.0
    cur0 = cur1 = None
    width = 0.0
    for s0, s1, w in parts + [(float("inf"), float("inf"), 0.0)]:
        if cur1 is None or s0 > cur1:
            if cur1 is not None:
                length += cur1 - cur0
                area += (cur1 - cur0) * width
            cur0, cur1, width = s0, s1, w
        else:
            cur1, width = max(cur1, s1), max(width, w)
    return length, area


def segment_run(run: Run, seg_m: float, min_cover: float = 0.5) -> list[Segment]:
    if not run.track:
        return []
    end = max([run.track[-1][2]] + [s1 for _, s1, _ in run.covered])
    n = max(1, int(-(-end // seg_m)))
    segs = [Segment(run.key, k * seg_m, min((k + 1) * seg_m, end)) for k in range(n)]
    for seg in segs:
        seg.covered_m, seg.surveyed_area_m2 = _union(run.covered, seg.s0, seg.s1)
        seg.coords = _coords(run.track, seg.s0, seg.s1)
    for c in run.cracks:
        k = min(n - 1, max(0, int(c.s // seg_m)))
        seg = segs[k]
        seg.crack_length_m += float(c.info.get("length_m") or 0)
        seg.crack_area_m2 += float(c.info.get("area_m2") or 0)
        seg.max_width_mm = max(seg.max_width_mm, float(c.info.get("max_width_mm") or 0))
        t, sev = str(c.info.get("type")), str(c.info.get("severity"))
        seg.types[t] = seg.types.get(t, 0) + 1
        seg.severities[sev] = seg.severities.get(sev, 0) + 1
    for seg in segs:
        enough = seg.s1 > seg.s0 and seg.covered_m >= min_cover * (seg.s1 - seg.s0)
        seg.condition = condition(seg.cracked_pct) if enough else "not surveyed"
    return segs


def _coords(track: list[tuple[float, float, float]], a: float, b: float) -> list[tuple[float, float]]:
    """The track between chainages a and b as (lon, lat), interpolated at both ends."""
    def at(s: float) -> tuple[float, float]:
        for (la0, lo0, s0), (la1, lo1, s1) in zip(track, track[1:]):
            if s0 <= s <= s1:
                t = 0 if s1 == s0 else (s - s0) / (s1 - s0)
                return lo0 + t * (lo1 - lo0), la0 + t * (la1 - la0)
        la, lo, _ = track[-1] if s > track[0][2] else track[0]
        return lo, la
    inner = [(lo, la) for la, lo, s in track if a < s < b]
    return [at(a)] + inner + [at(b)]
