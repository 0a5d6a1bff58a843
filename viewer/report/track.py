"""Local east/north metres around a reference point, and chainage along the driven track."""
from __future__ import annotations

import math

R_EARTH = 6371008.8


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * R_EARTH * math.asin(math.sqrt(min(1.0, a)))


class LocalENU:
    """Equirectangular east/north metres around (lat0, lon0): exact enough over a few km."""

    def __init__(self, lat0: float, lon0: float) -> None:
        self.lat0, self.lon0 = lat0, lon0
        self.kx = math.radians(1) * R_EARTH * math.cos(math.radians(lat0))
        self.ky = math.radians(1) * R_EARTH

    def to_en(self, lat: float, lon: float) -> tuple[float, float]:
        return (lon - self.lon0) * self.kx, (lat - self.lat0) * self.ky

    def to_latlon(self, e: float, n: float) -> tuple[float, float]:
        return self.lat0 + n / self.ky, self.lon0 + e / self.kx


def chainage(points: list[tuple[float, float]]) -> list[float]:
    """Cumulative haversine distance (m) along (lat, lon) points."""
    out = [0.0]
    for (a, b), (c, d) in zip(points, points[1:]):
        out.append(out[-1] + haversine_m(a, b, c, d))
    return out


def heading_between(en0: tuple[float, float], en1: tuple[float, float]) -> float | None:
    """Degrees clockwise from north from en0 to en1, None if they coincide."""
    de, dn = en1[0] - en0[0], en1[1] - en0[1]
    if math.hypot(de, dn) < 1e-6:
        return None
    return math.degrees(math.atan2(de, dn)) % 360
