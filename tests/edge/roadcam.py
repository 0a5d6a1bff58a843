"""Known cameras over a flat road, for the measure and calibrate tests: a square-on view and a
pinhole camera pitched down at the road, and the mask an ideal segmenter would give of a crack."""
from __future__ import annotations

import math

import numpy as np

W, H = 640, 480


def square_on(mm_per_px: float, size: tuple[int, int] = (W, H), y_near: float = 1.0) -> np.ndarray:
    """Image -> road: x right from the image's centre column, y forward from y_near at the bottom row."""
    s = mm_per_px / 1000.0
    w, h = size
    return np.array([[s, 0, -s * (w - 1) / 2], [0, -s, y_near + s * (h - 1)], [0, 0, 1]])


def pinhole(f: float = 500.0, height_m: float = 1.5, pitch_deg: float = 20.0, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """Image -> road of a camera ``height_m`` above the road, pitched down, looking forward (+y)."""
    t = math.radians(pitch_deg)
    K = np.array([[f, 0, (size[0] - 1) / 2], [0, f, (size[1] - 1) / 2], [0, 0, 1]])
    # Road (x, y, 1) -> camera (X right, Y down, Z forward): X = x, Y = -y sin t + h cos t, Z = y cos t + h sin t.
    G = K @ np.array([[1, 0, 0], [0, -math.sin(t), height_m * math.cos(t)], [0, math.cos(t), height_m * math.sin(t)]])
    return np.linalg.inv(G)


def road_crack_mask(Hc: np.ndarray, x0: float, y0: float, x1: float, y1: float, width: float,
                    size: tuple[int, int] = (W, H)) -> np.ndarray:
    """The image of a straight crack of ``width`` m on the road from (x0, y0) to (x1, y1): a pixel is
    crack when the road point under its centre lies in the crack (what an ideal segmenter says)."""
    v, u = np.mgrid[0:size[1], 0:size[0]].astype(np.float64)
    X = np.stack([u, v, np.ones_like(u)], -1) @ Hc.T
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = X[..., 0] / X[..., 2], X[..., 1] / X[..., 2]
    d = np.array([x1 - x0, y1 - y0])
    length = float(np.hypot(*d))
    t = ((x - x0) * d[0] + (y - y0) * d[1]) / length
    n = np.abs(-(x - x0) * d[1] + (y - y0) * d[0]) / length
    inside = (X[..., 2] > 0) & (t >= 0) & (t <= length) & (n <= width / 2)
    return np.where(inside, np.uint8(255), np.uint8(0))
