"""Cracks in physical units on the road plane, and what kind of crack each is.

A ground-plane homography ``H`` (from ``crack-edge calibrate``, saved as ``[ground]``) maps a
pixel of the calibration image (``image_size``, pixel centres at integer coordinates) to the
road: ``x`` lateral (m, right positive), ``y`` forward (m), from the vehicle's reference point.
A mask is at inference resolution: its pixels are first scaled to the calibration size (the
model sees the whole frame resized, no cropping), then mapped.

Measuring is done on the image, not on a resampled bird's-eye view: a thin far crack would be
smeared by resampling, and mapping only the crack pixels costs far less than warping every
frame.  The homography's local Jacobian ``J`` does the rest:

* **length**: the skeleton's links (4- and bridge-free diagonal neighbours) mapped and summed;
* **width** at a skeleton pixel: ``(2d - 1)`` px (``d`` the distance to the background) times
  ``|det J| / |J t|``, the road width of one pixel across the crack, with ``t`` the skeleton's
  local direction (principal axis of the skeleton pixels in a 7x7 window);
* **area**: each pixel's mapped area, ``|det H| / w^3`` (``w`` its homogeneous coordinate);
* **type**: principal axis of the mapped skeleton (weighted by road length) within 45 degrees of
  forward is longitudinal, else transverse; alligator (block) when the skeleton spreads in both
  directions (sqrt of the eigenvalue ratio >= 0.3) and has at least 3 branch points;
* **severity** from the widest width (ASTM D6433, asphalt): low < 10 mm, medium 10-75, high > 75.

Only the road within ``max_range_m`` of the reference point (and below the horizon) is measured;
that part of the image is the frame's *footprint*.  Without calibration the same components are
reported in pixels, their type judged in the image with image-vertical taken as forward.
Pure numpy/OpenCV (no torch): this runs in the daemon's publish thread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

from edge.processing import CrackMeasures, components, thin
from edge.wire import MAX_CRACKS   # the wire's limit on the cracks listed: the largest first

FORWARDS = {"+y": (0.0, 1.0), "-y": (0.0, -1.0), "+x": (1.0, 0.0), "-x": (-1.0, 0.0)}
W_EPS = 1e-9                    # homogeneous w below this (relative) is the horizon
ALLIGATOR_SPREAD = 0.3          # sqrt(lambda_min / lambda_max) of the mapped skeleton
ALLIGATOR_BRANCHES = 3
DIRECTION_WINDOW = 7
MAX_VIEWS = 8                   # mask sizes whose footprint is kept (one per inference size in practice)            # px: the window whose skeleton pixels give the local direction


class GroundError(ValueError):
    """A homography that cannot measure the road; ``reason`` is a short stable tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def forward_rotation(forward: str) -> np.ndarray:
    """3x3 taking the calibration's road axes to ours: ``forward`` names its forward axis."""
    fx, fy = FORWARDS[forward]
    rx, ry = fy, -fx   # right of forward, seen from above with x right / y forward
    return np.array([[rx, ry, 0.0], [fx, fy, 0.0], [0.0, 0.0, 1.0]])


def apply(H: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map (N, 2) points: (road (N, 2), w (N,))."""
    p = np.asarray(pts, np.float64).reshape(-1, 2)
    X = p @ H[:, :2].T + H[:, 2]
    w = X[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return X[:, :2] / w[:, None], w


def polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def _clip(poly: list[np.ndarray], a: np.ndarray) -> list[np.ndarray]:
    """Sutherland-Hodgman: the part of a convex polygon where a . (u, v, 1) >= 0."""
    out: list[np.ndarray] = []
    for i, p in enumerate(poly):
        q = poly[(i + 1) % len(poly)]
        fp, fq = a @ (p[0], p[1], 1.0), a @ (q[0], q[1], 1.0)
        if fp >= 0:
            out.append(p)
        if (fp >= 0) != (fq >= 0):
            out.append(p + (q - p) * (fp / (fp - fq)))
    return out


def normalise(H: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``H`` scaled to a largest entry of 1, its sign such that w > 0 at the image's bottom centre
    (the road just in front of the camera); a homography is only defined up to such a factor."""
    H = np.asarray(H, np.float64)
    W, Hh = image_size
    _, w = apply(H, np.array([[(W - 1) / 2.0, Hh - 1.0]]))
    scale = np.abs(H).max()
    if not np.isfinite(scale) or scale == 0:
        raise GroundError("singular", "the homography is zero or not finite")
    H = H / scale
    return -H if w[0] < 0 else H


def footprint(H: np.ndarray, image_size: tuple[int, int], max_range_m: float) -> np.ndarray:
    """The image polygon (calibration px) that shows road in front, within ``max_range_m``.

    ``H`` is normalised (w > 0 in front).  Raises GroundError when a bottom corner of the
    image maps behind the camera (at or above the horizon) or the range limit leaves
    anything but a four-cornered piece of the image.
    """
    W, Hh = image_size
    if not (abs(np.linalg.det(H)) > 1e-12 * np.abs(H).max() ** 3):
        raise GroundError("singular", "the homography is singular (it maps the image onto a line)")
    corners = np.array([[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, Hh - 0.5], [-0.5, Hh - 0.5]])
    road, w = apply(H, corners)
    scale = np.abs(H[2]).sum() * max(W, Hh)
    for k in (2, 3):
        if not w[k] > W_EPS * scale:
            raise GroundError("behind_camera", (
                f"image corner ({corners[k][0]:.0f}, {corners[k][1]:.0f}) maps behind the camera "
                "(at or above the horizon): the points or the image size do not describe this camera"))
    near = road[2:].mean(axis=0)
    facing = 1.0 if near[1] >= 0 else -1.0      # a rear camera sees negative y
    poly = _clip(list(corners), H[2] - W_EPS * scale * np.array([0.0, 0.0, 1.0]))          # in front
    poly = _clip(poly, max_range_m * H[2] - facing * H[1])                        # facing*y <= range
    if not poly:
        raise GroundError("range", f"no road within max_range_m = {max_range_m:g} is in view; set it larger")
    if len(poly) != 4:
        raise GroundError("range", (
            f"max_range_m = {max_range_m:g} cuts the image into a {len(poly)}-cornered piece (a rolled or "
            "yawed camera, or a range shorter than the nearest road seen); set max_range_m larger"))
    pts = np.array(poly)
    # Clockwise in the image from its top-left-most corner: far-left, far-right, near-right, near-left.
    pts = np.roll(pts, -int(np.argmin(pts.sum(axis=1))), axis=0)
    _, wp = apply(H, pts)
    if not (wp > 0).all():
        raise GroundError("behind_camera", "the footprint reaches behind the camera")
    return pts


def check_homography(H: Sequence[Sequence[float]], image_size: tuple[int, int], max_range_m: float) -> np.ndarray:
    """The normalised homography, or GroundError saying why it cannot be used."""
    arr = np.asarray(H, np.float64)
    if arr.shape != (3, 3) or not np.isfinite(arr).all():
        raise GroundError("shape", "homography must be 3 rows of 3 finite numbers")
    arr = normalise(arr, image_size)
    footprint(arr, image_size, max_range_m)
    return arr


@dataclass(frozen=True)
class Ground:
    """A calibration ready to measure: H in our road axes, normalised; the settings that go with it."""
    H: np.ndarray
    image_size: tuple[int, int]
    max_range_m: float = 20.0
    severity_mm: tuple[float, float] = (10.0, 75.0)
    _views: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, homography: Sequence[Sequence[float]], image_size: tuple[int, int], forward: str = "+y",
              max_range_m: float = 20.0, severity_mm: tuple[float, float] = (10.0, 75.0)) -> "Ground":
        H = forward_rotation(forward) @ np.asarray(homography, np.float64)
        return cls(check_homography(H, image_size, max_range_m), tuple(image_size), max_range_m, tuple(severity_mm))

    @classmethod
    def from_config(cls, cfg: Any) -> "Ground | None":
        """From an ``edge.config.GroundConfig`` (None when it holds no calibration)."""
        if cfg is None or cfg.homography is None:
            return None
        return cls.build(cfg.homography, cfg.image_size, cfg.forward, cfg.max_range_m, cfg.severity_mm)

    def view(self, width: int, height: int) -> "MaskGround":
        """The calibration for masks of ``width`` x ``height`` (cached: one per inference size)."""
        key = (width, height)
        v = self._views.get(key)
        if v is None:
            if len(self._views) >= MAX_VIEWS:   # a folder of photos of many sizes must not grow it
                del self._views[next(iter(self._views))]
            v = self._views[key] = MaskGround.make(self, width, height)
        return v

    def fits(self, frame_width: int, frame_height: int) -> bool:
        """Whether frames of this size are the calibrated camera's (same aspect within 1 %): another
        camera mode would be scaled to the calibration and measured wrong."""
        W, Hh = self.image_size
        return abs(frame_width * Hh - frame_height * W) <= 0.01 * W * frame_height

    def severity(self, width_mm: float) -> str:
        low, high = self.severity_mm
        return "low" if width_mm < low else "medium" if width_mm <= high else "high"


@dataclass(frozen=True)
class MaskGround:
    """``Ground`` for one mask size: mask px -> road m, the footprint and its pixels."""
    ground: Ground
    Hm: np.ndarray                 # mask pixel -> road
    det: float                     # det(Hm)
    footprint_m: list[list[float]]
    surveyed_area_m2: float
    roi: np.ndarray | None         # uint8 0/1 of mask pixels inside the footprint; None: all of them

    @classmethod
    def make(cls, ground: Ground, width: int, height: int) -> "MaskGround":
        W, Hh = ground.image_size
        sx, sy = W / width, Hh / height
        # Mask pixel centre u -> calibration pixel centre (u + 0.5) * sx - 0.5.
        S = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        Hm = ground.H @ S
        poly = footprint(ground.H, ground.image_size, ground.max_range_m)
        road, _ = apply(ground.H, poly)
        full = np.allclose(poly, [[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, Hh - 0.5], [-0.5, Hh - 0.5]])
        roi = None
        if not full:
            in_mask = (poly + 0.5) / (sx, sy) - 0.5
            roi = np.zeros((height, width), np.uint8)
            cv2.fillConvexPoly(roi, np.round(in_mask * 16).astype(np.int32), 1, cv2.LINE_8, 4)
        return cls(ground, Hm, float(np.linalg.det(Hm)), [[round(float(x), 4), round(float(y), 4)] for x, y in road],
                   round(polygon_area(road), 6), roi)


@dataclass
class Measured:
    """What one mask yields: the pixel measures, the per-crack list, the ground totals (or None)."""
    pixels: CrackMeasures
    cracks: list[dict[str, Any]]
    ground: dict[str, Any] | None

    def header_fields(self) -> dict[str, Any]:
        return {"calibrated": self.ground is not None, "ground": self.ground, "cracks": self.cracks}


def _transitions_lut() -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    for code in range(256):
        p = [(code >> k) & 1 for k in range(8)]
        lut[code] = sum(1 for k in range(8) if p[k] == 0 and p[(k + 1) % 8] == 1)
    return lut


_TRANSITIONS = _transitions_lut()


def _corner_lut() -> np.ndarray:
    """Neighbourhoods (bit k: N, NE, E, SE, S, SW, W, NW) of a staircase corner: a pixel whose two
    perpendicular 4-neighbours are on and whose neighbours stay 8-connected without it.  Zhang-Suen
    leaves such corners; with them a 45-degree crack would measure sqrt(2) times too long."""
    lut = np.zeros(256, np.uint8)
    for code in range(256):
        on = [(code >> k) & 1 for k in range(8)]
        if sum(on) < 2 or not any(on[a] and on[(a + 2) % 8] for a in (0, 2, 4, 6)):
            continue
        parent = list(range(8))
        def find(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i
        for k in range(8):
            if on[k] and on[(k + 1) % 8]:
                parent[find(k)] = find((k + 1) % 8)
            if k % 2 == 0 and on[k] and on[(k + 2) % 8]:
                parent[find(k)] = find((k + 2) % 8)
        lut[code] = len({find(k) for k in range(8) if on[k]}) == 1
    return lut


_CORNERS = _corner_lut()
_COUNT = np.array([bin(c).count("1") for c in range(256)], np.uint8)   # neighbours on


_OFFSETS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))   # bit k: N, NE, ... NW


def _codes_at(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The 8-neighbour codes of the pixels (ys, xs) of a 0/1 image with a background border
    (edge.processing.neighbour_codes, at those pixels only: cracks are a few % of a mask)."""
    code = np.zeros(len(ys), np.uint8)
    for bit, (dy, dx) in enumerate(_OFFSETS):
        code |= img[ys + dy, xs + dx] << bit
    return code


def _cut_corners(skel: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
    """Which skeleton pixels (sy, sx) remain once staircase corners are removed (strictly 8-connected):
    pixels of one parity at a time, so that no two 4-adjacent pixels go together and the curve
    stays connected."""
    s = skel.copy()
    alive = np.ones(len(sy), bool)
    parity = (sy + sx) & 1
    for _ in range(8):
        changed = False
        for par in (0, 1):
            idx = np.flatnonzero(alive & (parity == par))
            drop = idx[_CORNERS[_codes_at(s, sy[idx], sx[idx])] > 0]
            if len(drop):
                s[sy[drop], sx[drop]] = 0
                alive[drop] = False
                changed = True
        if not changed:
            break
    return alive


def _links(skel: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Skeleton links as (from, to) indices into (sy, sx): 4-neighbours, and diagonals only where
    no 4-path bridges them (an L corner is two steps, not two steps and a diagonal).

    The skeleton lies inside a crop with a background border, so every neighbour index is valid."""
    index = np.full(skel.shape, -1, np.int64)
    index[sy, sx] = np.arange(len(sy))
    on = lambda dy, dx: skel[sy + dy, sx + dx] > 0  # noqa: E731
    east, south, west = on(0, 1), on(1, 0), on(0, -1)
    pairs = [(east, 0, 1), (south, 1, 0), (on(1, 1) & ~east & ~south, 1, 1), (on(1, -1) & ~west & ~south, 1, -1)]
    src = [np.flatnonzero(ok) for ok, _, _ in pairs]
    dst = [index[sy[i] + dy, sx[i] + dx] for i, (_, dy, dx) in zip(src, pairs)]
    return np.concatenate(src), np.concatenate(dst)


def _directions(skel: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> tuple[np.ndarray, ...]:
    """At each skeleton pixel: the unit direction (tx, ty) of the skeleton pixels around it (their
    principal axis) and their mean's offset (dx, dy), which lies on the crack's smooth centre line
    rather than on the pixel staircase.  Moments in offsets from the window's centre, gathered at
    the skeleton's pixels only."""
    r = DIRECTION_WINDOW // 2
    p = np.pad(skel, r)
    n = np.zeros(len(sy))
    mx, my, mxx, mxy, myy = (np.zeros(len(sy)) for _ in range(5))
    for dy in range(-r, r + 1):
        rows = sy + r + dy
        for dx in range(-r, r + 1):
            v = p[rows, sx + r + dx].astype(np.float64)
            n += v
            mx += v * dx
            my += v * dy
            mxx += v * (dx * dx)
            mxy += v * (dx * dy)
            myy += v * (dy * dy)
    n = np.maximum(n, 1.0)
    cxx, cxy, cyy = mxx - mx * mx / n, mxy - mx * my / n, myy - my * my / n
    theta = 0.5 * np.arctan2(2 * cxy, cxx - cyy)
    return np.cos(theta), np.sin(theta), mx / n, my / n


def _r(value: Any, digits: int) -> float:
    """A header number: rounded, and finite (the wire refuses NaN; a degenerate pixel must not stop
    the publish thread)."""
    v = float(value)
    return round(v, digits) if math.isfinite(v) else 0.0


def measure_mask(mask: np.ndarray, min_component_px: int = 5, ground: Ground | None = None) -> Measured:
    """Every measure of a 0/255 mask: the header's pixel figures (as :func:`edge.processing.measure`),
    the cracks (largest first, at most MAX_CRACKS) and, with a calibration, the ground totals."""
    mh, mw = mask.shape
    view = ground.view(mw, mh) if ground is not None else None
    empty_ground = None if view is None else {
        "crack_length_m": 0.0, "crack_max_width_mm": 0.0, "crack_area_m2": 0.0,
        "surveyed_area_m2": view.surveyed_area_m2, "footprint_m": view.footprint_m}
    comp = components(mask, min_component_px)
    if comp.count == 0:
        return Measured(CrackMeasures(comp.ratio, 0, 0.0, 0.0), [], empty_ground)
    n, labels, roi, keep, stats = comp.n, comp.labels, comp.roi, comp.keep, comp.stats
    dist = cv2.distanceTransform(roi, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    skel = thin(roi)
    pixels = CrackMeasures(comp.ratio, comp.count, float(cv2.countNonZero(skel)),
                           round(max(1.0, 2.0 * float(dist.max()) - 1.0), 2))

    # Per component, vectorised over pixels with bincount (a noisy mask may have hundreds).
    ox, oy = comp.origin                          # crop -> mask coordinates
    py, px = np.nonzero(labels)
    plab = labels[py, px]
    sy, sx = np.nonzero(skel)
    slab = labels[sy, sx]
    width_px = 2.0 * dist[sy, sx].astype(np.float64) - 1.0
    max_w_px = np.zeros(n)
    np.maximum.at(max_w_px, plab, 2.0 * dist[py, px].astype(np.float64) - 1.0)
    max_w_px = np.maximum(max_w_px, 1.0)
    skel_px = np.bincount(slab, minlength=n)
    tx, ty, mdx, mdy = _directions(skel, sy, sx)
    is_branch = _TRANSITIONS[_codes_at(skel, sy, sx)] >= 3
    branches = np.zeros(n, np.int64)
    if is_branch.any():
        branch = np.zeros_like(skel)
        branch[sy[is_branch], sx[is_branch]] = 1
        nb, blabels = cv2.connectedComponents(branch, connectivity=8)
        first = np.full(nb, -1, np.int64)
        by_, bx_ = np.nonzero(blabels)
        first[blabels[by_, bx_]] = labels[by_, bx_]
        branches = np.bincount(first[1:][first[1:] > 0], minlength=n)

    if view is not None:
        H = view.Hm
        inside_p = np.ones(len(py), bool) if view.roi is None else view.roi[py + oy, px + ox] > 0
        inside_s = np.ones(len(sy), bool) if view.roi is None else view.roi[sy + oy, sx + ox] > 0
        road_p, wp = apply(H, np.stack([px + ox, py + oy], 1))
        area_p = np.where(inside_p, abs(view.det) / np.where(inside_p, wp, 1.0) ** 3, 0.0)
        road_s, ws = apply(H, np.stack([sx + ox, sy + oy], 1))
        # J = (1/w) [[h00 - x h20, h01 - x h21], [h10 - y h20, h11 - y h21]] at each skeleton pixel.
        ws_safe = np.where(inside_s, ws, 1.0)
        j00 = (H[0, 0] - road_s[:, 0] * H[2, 0]) / ws_safe
        j01 = (H[0, 1] - road_s[:, 0] * H[2, 1]) / ws_safe
        j10 = (H[1, 0] - road_s[:, 1] * H[2, 0]) / ws_safe
        j11 = (H[1, 1] - road_s[:, 1] * H[2, 1]) / ws_safe
        along = np.hypot(j00 * tx + j01 * ty, j10 * tx + j11 * ty)       # road m per px along the crack
        across = np.abs(j00 * j11 - j01 * j10) / np.maximum(along, 1e-12)  # road m per px across it
        width_mm = np.where(inside_s, width_px * across * 1000.0, 0.0)
        max_w_mm = np.zeros(n)
        np.maximum.at(max_w_mm, slab, width_mm)
        # Length: mapped links whose both ends lie inside the footprint.
        # Length: links of the strictly 8-connected skeleton between the smoothed centre-line points
        # (a chain of pixel steps alone reads a 22-degree line 8 % long), both ends in the footprint.
        alive = _cut_corners(skel, sy, sx)
        sub = np.flatnonzero(alive)
        cut = np.zeros_like(skel)
        cut[sy[sub], sx[sub]] = 1
        a, b = _links(cut, sy[sub], sx[sub])
        a, b = sub[a], sub[b]
        ok = inside_s[a] & inside_s[b]
        line, _ = apply(H, np.stack([sx + ox + mdx, sy + oy + mdy], 1))
        seg = np.hypot(*(line[a[ok]] - line[b[ok]]).T)
        length_m = np.bincount(slab[a[ok]], seg, minlength=n)
        # Smoothing pulls each end in by up to half a window: give that back at the skeleton's ends.
        ends = sub[(_COUNT[_codes_at(cut, sy[sub], sx[sub])] == 1) & inside_s[sub]]
        length_m += np.bincount(slab[ends], np.hypot(*(line[ends] - road_s[ends]).T), minlength=n)
        area_m2 = np.bincount(plab, area_p, minlength=n)
        cen = np.stack([np.bincount(plab, area_p * np.nan_to_num(road_p[:, i]), minlength=n) for i in (0, 1)], 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            cen = cen / area_m2[:, None]
        meas = np.where(inside_s, along, 0.0)
        pts = np.where(inside_s[:, None], np.nan_to_num(road_s), 0.0)
        measured = np.bincount(plab, inside_p.astype(np.float64), minlength=n) > 0
    else:
        meas = np.ones(len(sy))
        pts = np.stack([sx.astype(np.float64), -sy.astype(np.float64)], 1)   # image up = forward
        measured = np.zeros(n, bool)
    # Orientation: weighted covariance of the (mapped) skeleton per component.
    sw = np.bincount(slab, meas, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        mx_ = np.bincount(slab, meas * pts[:, 0], minlength=n) / sw
        my_ = np.bincount(slab, meas * pts[:, 1], minlength=n) / sw
        dx, dy = pts[:, 0] - mx_[slab], pts[:, 1] - my_[slab]
        cxx = np.bincount(slab, meas * dx * dx, minlength=n) / sw
        cxy = np.bincount(slab, meas * dx * dy, minlength=n) / sw
        cyy = np.bincount(slab, meas * dy * dy, minlength=n) / sw
    cxx, cxy, cyy = (np.nan_to_num(c) for c in (cxx, cxy, cyy))
    half_tr, diff = (cxx + cyy) / 2, np.sqrt(((cxx - cyy) / 2) ** 2 + cxy ** 2)
    lmax, lmin = half_tr + diff, np.maximum(half_tr - diff, 0.0)
    theta = 0.5 * np.arctan2(2 * cxy, cxx - cyy)           # major axis angle from +x
    longitudinal = np.abs(np.sin(theta)) >= math.sqrt(0.5)  # within 45 degrees of forward (y)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.nan_to_num(np.sqrt(lmin / lmax))

    order = keep[np.argsort(-stats[keep, cv2.CC_STAT_AREA], kind="stable")]
    cracks = []
    for k in order[:MAX_CRACKS]:
        x, y, w, h, area = (int(v) for v in stats[k])
        kind = ("alligator" if spread[k] >= ALLIGATOR_SPREAD and branches[k] >= ALLIGATOR_BRANCHES
                else "longitudinal" if longitudinal[k] else "transverse")
        c: dict[str, Any] = {"type": kind, "length_px": float(skel_px[k]), "max_width_px": _r(max_w_px[k], 2),
                             "area_px": area, "bbox_px": [x + ox, y + oy, w, h],
                             "length_m": None, "max_width_mm": None, "area_m2": None, "centroid_m": None,
                             "severity": None}
        if view is not None and measured[k]:
            c.update(length_m=_r(length_m[k], 4), max_width_mm=_r(max_w_mm[k], 2),
                     area_m2=_r(area_m2[k], 6),
                     centroid_m=[_r(cen[k, 0], 3), _r(cen[k, 1], 3)],
                     severity=ground.severity(float(max_w_mm[k])))  # type: ignore[union-attr]
        cracks.append(c)
    g = None
    if view is not None:
        g = {"crack_length_m": _r(length_m[keep].sum(), 4),
             "crack_max_width_mm": _r(max_w_mm[keep].max(), 2),
             "crack_area_m2": _r(area_m2[keep].sum(), 6),
             "surveyed_area_m2": view.surveyed_area_m2, "footprint_m": view.footprint_m}
    return Measured(pixels, cracks, g)
