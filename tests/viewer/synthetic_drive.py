"""A synthetic drive whose ground truth is drawn here: a straight then curved track, cracks at
known chainage, frames every 2.5 m seeing 2 to 8 m ahead (so each crack is in 2-3 frames), and a
stretch without a fix."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edge.recording import RecordingWriter
from edge.wire import encode_mask, jpeg_b64, png_b64
from viewer.report.ground import road_to_world
from viewer.report.track import LocalENU

LAT0, LON0 = 48.8566, 2.3522
STRAIGHT_M, RADIUS_M, ARC_M = 100.0, 50.0, 80.0
STEP_M, SPEED = 2.5, 5.0
Y0, Y1, WIDTH = 2.0, 8.0, 3.5
RUN_ID = "0123456789abcdef" * 2     # the wire asks for 32 hex digits
NO_FIX = (130.0, 150.0)             # frames with chainage in here have no fix
# chainage, lateral x, type, length_m, max_width_mm, area_m2, severity
CRACKS = [(5.0, 0.3, "longitudinal", 2.0, 4.0, 1.0, "low"),
          (25.0, -0.5, "transverse", 3.0, 20.0, 1.5, "medium"),
          (26.5, 0.8, "longitudinal", 1.0, 8.0, 1.5, "low"),
          (55.0, 0.0, "alligator", 5.0, 90.0, 10.0, "high"),
          (112.0, 0.2, "longitudinal", 2.0, 6.0, 0.5, "low")]
# expected per 10 m segment index: (length, area) -> pct = area / 35 m2 when fully covered


def path(s: float) -> tuple[float, float, float]:
    """east, north, heading at chainage s: north for 100 m, then a right-hand arc of radius 50 m."""
    if s <= STRAIGHT_M:
        return 0.0, s, 0.0
    th = (s - STRAIGHT_M) / RADIUS_M
    return RADIUS_M * (1 - math.cos(th)), STRAIGHT_M + RADIUS_M * math.sin(th), math.degrees(th)


def _to_road(world: tuple[float, float], s: float) -> tuple[float, float]:
    e, n, h = path(s)
    r = math.radians(h)
    de, dn = world[0] - e, world[1] - n
    return de * math.cos(r) - dn * math.sin(r), de * math.sin(r) + dn * math.cos(r)


def write_drive(folder: Path, vehicle: str = "van1", positions: bool = True) -> int:
    enu = LocalENU(LAT0, LON0)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:40, 30:33] = 255
    img = np.full((48, 64, 3), 90, np.uint8)
    n = int((STRAIGHT_M + ARC_M) // STEP_M) + 1
    with RecordingWriter(folder) as w:
        for i in range(n):
            s = i * STEP_M
            e, nn, h = path(s)
            lat, lon = enu.to_latlon(e, nn)
            fix = positions and not (NO_FIX[0] <= s < NO_FIX[1])
            cracks = []
            for c, x, typ, length, wmm, area, sev in CRACKS:
                ce, cn, ch = path(c)
                world = road_to_world(x, 0.0, (ce, cn), ch)
                rx, ry = _to_road(world, s)
                if Y0 <= ry <= Y1:
                    cracks.append({"type": typ, "length_px": 30.0, "max_width_px": 3.0, "area_px": 90,
                                   "bbox_px": [30, 10, 3, 30], "length_m": length, "max_width_mm": wmm,
                                   "area_m2": area, "centroid_m": [rx, ry], "severity": sev})
            header = {
                "vehicle_id": vehicle, "run_id": RUN_ID, "seq": i, "frame_index": i, "t_capture": 1e9 + s / SPEED,
                "t_publish": 1e9 + s / SPEED, "infer_ms": 5.0, "model_sha256": "0" * 64, "width": 64, "height": 48,
                "crack_ratio": 0.03 * len(cracks), "crack_count": len(cracks), "crack_length_px": 30.0 * len(cracks),
                "crack_max_width_px": 3.0, "calibrated": True,
                "position": {"source": "fixed", "fix": fix, "reason": "" if fix else "no_fix",
                             "lat": lat if fix else None, "lon": lon if fix else None, "alt_m": None,
                             "speed_mps": SPEED if fix else None, "heading_deg": h if fix else None,
                             "quality": "3d" if fix else "none", "age_s": 0.0 if fix else None},
                "ground": {"crack_length_m": sum(c["length_m"] for c in cracks), "crack_max_width_mm": 0.0,
                           "crack_area_m2": sum(c["area_m2"] for c in cracks), "surveyed_area_m2": WIDTH * (Y1 - Y0),
                           "footprint_m": [[-WIDTH / 2, Y1], [WIDTH / 2, Y1], [WIDTH / 2, Y0], [-WIDTH / 2, Y0]]},
                "cracks": cracks,
            }
            w.write(encode_mask(header, png_b64(mask), jpeg_b64(img) if i % 2 else None), 1e9 + s / SPEED)
    return n
