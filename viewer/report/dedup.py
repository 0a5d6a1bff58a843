"""Count a crack seen by several consecutive frames once.

Rule: observations of the same type whose world centroids lie within ``tol_m`` of each other are
one crack; the kept observation is the one seen nearest the camera (smallest forward distance y),
where the ground measures are the most accurate.  Greedy in that order: near views claim first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class Crack:
    """One calibrated crack observation placed on the ground."""
    e: float
    n: float
    s: float            # chainage (m) of the crack along the track
    y_m: float          # forward distance from the camera origin when seen
    info: dict[str, Any]
    frame: str          # "<vehicle>/<run>/<seq>"
    lat: float = 0.0
    lon: float = 0.0


def dedup(cracks: list[Crack], tol_m: float = 0.5) -> list[Crack]:
    kept: list[Crack] = []
    for c in sorted(cracks, key=lambda c: c.y_m):
        if not any(k.info.get("type") == c.info.get("type") and math.hypot(k.e - c.e, k.n - c.n) <= tol_m
                   for k in kept):
            kept.append(c)
    return sorted(kept, key=lambda c: c.s)
