"""Put cracks on the ground: road-frame metres (x right, y forward) -> world east/north."""
from __future__ import annotations

import math


def road_to_world(x: float, y: float, en: tuple[float, float], heading_deg: float) -> tuple[float, float]:
    """Vehicle at ``en`` heading ``heading_deg`` (clockwise from north): forward is (sin h, cos h)."""
    h = math.radians(heading_deg)
    fe, fn = math.sin(h), math.cos(h)
    re, rn = math.cos(h), -math.sin(h)
    return en[0] + x * re + y * fe, en[1] + x * rn + y * fn


def forward_span(footprint: list[list[float]] | None) -> tuple[float, float, float]:
    """(nearest y, farthest y, width) of a footprint on the road; zeros if none."""
    if not footprint or len(footprint) != 4:
        return 0.0, 0.0, 0.0
    ys = [p[1] for p in footprint]
    xs = [p[0] for p in footprint]
    return min(ys), max(ys), max(xs) - min(xs)
