"""Pre-processing as the model card says, thresholding, and the crack measures.

Everything runs at inference resolution on buffers allocated once per size: on a 2-core box
the runtime needs the cores, so these steps must stay a few milliseconds.  The frame the model
sees is made in :mod:`models.preprocess` (the trainer's eval, validation and INT8 guard use the
same code), re-exported here as the daemon's ``Preprocessor``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from models.preprocess import Preprocessor, padded

__all__ = ["CrackMeasures", "Preprocessor", "padded", "threshold", "thin", "neighbour_codes", "skeleton_length", "measure"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrackMeasures:
    ratio: float          # crack pixels / all pixels of the mask
    count: int            # 8-connected regions of at least min_component_px pixels
    length_px: float      # pixels of their 1-pixel-wide skeleton
    max_width_px: float   # 2 * max(distance to background) - 1


def threshold(prob: np.ndarray, thr: float) -> np.ndarray:
    """[H,W] probability -> uint8 mask, 255 where prob > thr (the wire's PNG values)."""
    _, mask = cv2.threshold(np.ascontiguousarray(prob, np.float32), thr, 255, cv2.THRESH_BINARY)
    return mask.astype(np.uint8)


def _zhang_suen_tables() -> tuple[np.ndarray, np.ndarray]:
    """Which 8-neighbourhoods (bit k = neighbour P(k+2), clockwise from north) each pass deletes."""
    first = np.zeros(256, bool)
    second = np.zeros(256, bool)
    for code in range(256):
        p = [(code >> k) & 1 for k in range(8)]  # P2..P9
        b = sum(p)
        a = sum(1 for k in range(8) if p[k] == 0 and p[(k + 1) % 8] == 1)
        if not (2 <= b <= 6 and a == 1):
            continue
        p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
        first[code] = p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0
        second[code] = p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0
    return first, second


_PASSES = _zhang_suen_tables()
_PASS_LUTS = tuple(t.astype(np.uint8) for t in _PASSES)
# (dy, dx) of P2..P9: north, then clockwise; and the same as a correlation kernel of bit weights.
_NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))
_CODE_KERNEL = np.zeros((3, 3), np.float32)
for _bit, (_dy, _dx) in enumerate(_NEIGHBOURS):
    _CODE_KERNEL[1 + _dy, 1 + _dx] = 1 << _bit
# Thinning removes one pixel layer per side per pass: regions wider than twice this are not
# cracks, and an untrained model's blobs must not cost the pipeline a frame.
MAX_THINNING_PASSES = 32


def thin(mask: np.ndarray, dense: bool | None = None) -> np.ndarray:
    """The Zhang-Suen skeleton (1 pixel wide, 8-connected, 0/1 uint8) of a 0/255 mask.

    The mask needs a background border.  Sparse masks (real cracks) visit only their own
    pixels; dense ones use one 3x3 correlation and one table look-up per pass instead.
    Regions that touch neither thin independently (8-separated pixels share no neighbourhood),
    so thinning a whole mask is thinning each crack on its own.
    """
    img = (mask > 0).astype(np.uint8)
    ys, xs = np.nonzero(img)
    if dense is None:
        dense = len(ys) > img.size // 8
    for _ in range(MAX_THINNING_PASSES):
        changed = False
        for table, lut in zip(_PASSES, _PASS_LUTS):
            if dense:
                codes = cv2.filter2D(img, cv2.CV_16S, _CODE_KERNEL, borderType=cv2.BORDER_CONSTANT).astype(np.uint8)
                delete_img = cv2.LUT(codes, lut) & img
                if cv2.countNonZero(delete_img):
                    img -= delete_img
                    changed = True
                continue
            code = np.zeros(len(ys), np.uint8)
            for bit, (dy, dx) in enumerate(_NEIGHBOURS):
                code |= img[ys + dy, xs + dx] << bit
            delete = table[code]
            if delete.any():
                img[ys[delete], xs[delete]] = 0
                ys, xs = ys[~delete], xs[~delete]
                changed = True
        if not changed:
            break
    return img


def neighbour_codes(img: np.ndarray) -> np.ndarray:
    """Per pixel of a 0/1 image, its 8 neighbours as bits (bit k = P(k+2), clockwise from north)."""
    return cv2.filter2D(img, cv2.CV_16S, _CODE_KERNEL, borderType=cv2.BORDER_CONSTANT).astype(np.uint8)


def skeleton_length(mask: np.ndarray, dense: bool | None = None) -> int:
    """Pixels of the Zhang-Suen skeleton of a 0/255 mask (see :func:`thin`)."""
    return int(cv2.countNonZero(thin(mask, dense)))


@dataclass(frozen=True)
class Components:
    """The 8-connected crack regions of a mask that are kept, in a crop around them."""
    ratio: float          # crack pixels / all pixels of the mask (the kept and the dropped)
    count: int            # regions of at least min_component_px pixels; 0: nothing else is set
    origin: tuple[int, int] = (0, 0)   # the crop's (x, y) in the mask
    n: int = 0            # labels in the crop, background 0 included
    labels: np.ndarray | None = None   # int32 crop labels, 0 where background or a dropped region
    roi: np.ndarray | None = None      # 0/255 uint8 of the kept regions
    keep: np.ndarray | None = None     # the kept labels
    stats: np.ndarray | None = None    # cv2.connectedComponentsWithStats' stats, per label, in the crop


def components(mask: np.ndarray, min_component_px: int = 5) -> Components:
    """The regions :func:`measure` and ``edge.measure.measure_mask`` measure, found once."""
    total = mask.size
    on = cv2.countNonZero(mask)
    if on == 0:
        return Components(0.0, 0)
    x, y, w, h = cv2.boundingRect(mask)
    # One pixel of background around the crop so the distance transform sees the border.
    roi = np.zeros((h + 2, w + 2), np.uint8)
    roi[1:-1, 1:-1] = mask[y:y + h, x:x + w]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(roi, connectivity=8)
    keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_component_px) + 1
    if len(keep) == 0:
        return Components(on / total, 0)
    if len(keep) < n - 1:
        kept = np.zeros(n, bool)
        kept[keep] = True
        labels = np.where(kept[labels], labels, 0)
        roi = np.where(labels > 0, np.uint8(255), np.uint8(0))
    return Components(on / total, int(len(keep)), (x - 1, y - 1), n, labels, roi, keep, stats)


def measure(mask: np.ndarray, min_component_px: int = 5) -> CrackMeasures:
    """Pixel ratio, number of cracks, length and maximum width (pixels) of a 0/255 mask."""
    c = components(mask, min_component_px)
    if c.count == 0:
        return CrackMeasures(c.ratio, 0, 0.0, 0.0)
    dist = cv2.distanceTransform(c.roi, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    length = float(skeleton_length(c.roi))
    width = max(1.0, 2.0 * float(dist.max()) - 1.0)
    return CrackMeasures(c.ratio, c.count, length, round(width, 2))
