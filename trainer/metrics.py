"""Crack-segmentation metrics: the one place every figure of the project is computed.

All figures are computed on probability maps at the image's original size against the raw
(undilated) ground truth, unless a definition below says otherwise.

- **strict**: pixel precision, recall, F1 and IoU at a threshold (``prob >= threshold``), counts
  summed over the whole set before dividing (dataset-scale, "ODS at a fixed threshold").
- **tol2** (2-pixel tolerance): a predicted crack pixel is correct if a ground-truth crack pixel
  lies in the radius-2 disc around it (dx^2 + dy^2 <= 4, 13 pixels); a ground-truth crack pixel is
  found if a predicted pixel lies in the radius-2 disc around it.  precision = correct / predicted,
  recall = found / ground truth, F1 their harmonic mean; counts summed over the set.
- **published_A**: the original work's "A" metrics: prediction ``prob >= 0.5``, the ground truth
  dilated as in training (3x3, 3 iterations), strict precision/recall/F1/IoU computed per image
  (their batches) and averaged over images.  Lenient: kept for comparison with the paper only.
- **published_M**: the original "M" metrics: prediction ``prob >= 0.4``; precision counts a
  predicted pixel as correct if a dilated-ground-truth pixel lies in the 5x5 window around it;
  recall = predicted ∩ raw ground truth / raw ground truth; IoU = correct / (predicted + raw ground
  truth - correct), capped at 1; per image, averaged over images.  Lenient as well.

A per-image ratio whose denominator is zero (no crack predicted and none present) counts as 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import cv2
import numpy as np

# 0.05 steps, then finer above 0.95: thin-crack models often peak there (picks sat at 0.95, the old edge).
DEFAULT_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05)) + (0.96, 0.97, 0.98, 0.99)

DEFINITIONS = {
    "strict": "pixel precision/recall/F1/IoU at the threshold, counts summed over the set, raw ground truth",
    "tol2": "2-pixel tolerance (radius-2 disc, dx^2+dy^2<=4) precision/recall/F1, counts summed over the set",
    "published_A": "original 'A': threshold 0.5, ground truth dilated 3x3 x3, per-image mean of strict P/R/F1/IoU",
    "published_M": "original 'M': threshold 0.4, precision within a 5x5 window of dilated ground truth, "
                   "recall on raw ground truth, per-image mean",
}


def disc(radius: int) -> np.ndarray:
    """The structuring element of all offsets with dx^2 + dy^2 <= radius^2."""
    r = np.arange(-radius, radius + 1)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius).astype(np.uint8)


def _dilate(mask: np.ndarray, kernel: np.ndarray, iterations: int = 1) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), kernel, iterations=iterations) > 0


def _ratio(num: float, den: float, empty: float = 0.0) -> float:
    return float(num) / float(den) if den else empty


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class Counts:
    """Pixel counts at one threshold, summed over images."""

    tp: int = 0
    pred: int = 0
    gt: int = 0
    pred_correct_tol: int = 0
    gt_found_tol: int = 0

    def add(self, other: "Counts") -> None:
        self.tp += other.tp
        self.pred += other.pred
        self.gt += other.gt
        self.pred_correct_tol += other.pred_correct_tol
        self.gt_found_tol += other.gt_found_tol

    def strict(self) -> dict[str, float]:
        p = _ratio(self.tp, self.pred)
        r = _ratio(self.tp, self.gt)
        return {"precision": p, "recall": r, "f1": _f1(p, r), "iou": _ratio(self.tp, self.pred + self.gt - self.tp)}

    def tol(self) -> dict[str, float]:
        p = _ratio(self.pred_correct_tol, self.pred)
        r = _ratio(self.gt_found_tol, self.gt)
        return {"precision": p, "recall": r, "f1": _f1(p, r)}


def count(pred: np.ndarray, gt: np.ndarray, tolerance: int = 2) -> Counts:
    """Counts for one binary prediction against one raw ground truth of the same size."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    pred = pred.astype(bool)
    gt = gt.astype(bool)
    k = disc(tolerance)
    return Counts(
        tp=int(np.count_nonzero(pred & gt)),
        pred=int(np.count_nonzero(pred)),
        gt=int(np.count_nonzero(gt)),
        pred_correct_tol=int(np.count_nonzero(pred & _dilate(gt, k))),
        gt_found_tol=int(np.count_nonzero(gt & _dilate(pred, k))),
    )


def published_a(prob: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    pred = prob >= 0.5
    g = _dilate(gt, np.ones((3, 3), np.uint8), 3)
    tp = np.count_nonzero(pred & g)
    np_, ng = np.count_nonzero(pred), np.count_nonzero(g)
    empty = 1.0 if np_ == 0 and ng == 0 else 0.0
    p, r = _ratio(tp, np_, empty), _ratio(tp, ng, empty)
    return {"precision": p, "recall": r, "f1": _f1(p, r) if (p + r) else empty,
            "iou": _ratio(tp, np_ + ng - tp, empty)}


def published_m(prob: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    pred = prob >= 0.4
    g_dil = _dilate(gt, np.ones((3, 3), np.uint8), 3)
    correct = np.count_nonzero(pred & _dilate(g_dil, np.ones((5, 5), np.uint8)))
    np_, ng = np.count_nonzero(pred), np.count_nonzero(gt)
    empty = 1.0 if np_ == 0 and ng == 0 else 0.0
    p = _ratio(correct, np_, empty)
    r = _ratio(np.count_nonzero(pred & gt), ng, empty)
    iou = min(1.0, _ratio(correct, np_ + ng - correct, empty))
    return {"precision": p, "recall": r, "f1": _f1(p, r) if (p + r) else empty, "iou": iou}


@dataclass
class ImageResult:
    name: str
    f1_tol: float
    f1: float
    iou: float


@dataclass
class MetricSet:
    """Accumulates every metric over a set of images, at several thresholds at once.

    ``update(prob, gt)`` takes one probability map and its raw ground truth at the original size.
    ``summary(threshold)`` gives every figure at one threshold; ``best_threshold()`` the threshold
    with the highest set-level 2-pixel-tolerance F1 (use it on validation, never on test).
    """

    thresholds: Sequence[float] = DEFAULT_THRESHOLDS
    tolerance: int = 2
    counts: dict[float, Counts] = field(default_factory=dict)
    per_image: dict[float, list[ImageResult]] = field(default_factory=dict)
    _a: list[dict[str, float]] = field(default_factory=list)
    _m: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.thresholds = tuple(float(t) for t in self.thresholds)
        for t in self.thresholds:
            self.counts[t] = Counts()
            self.per_image[t] = []

    def update(self, prob: np.ndarray, gt: np.ndarray, name: str = "") -> None:
        prob = np.asarray(prob, dtype=np.float32)
        gt = np.asarray(gt).astype(bool)
        for t in self.thresholds:
            c = count(prob >= t, gt, self.tolerance)
            self.counts[t].add(c)
            s, tol = c.strict(), c.tol()
            empty = c.pred == 0 and c.gt == 0
            self.per_image[t].append(ImageResult(name, 1.0 if empty else tol["f1"],
                                                 1.0 if empty else s["f1"], 1.0 if empty else s["iou"]))
        self._a.append(published_a(prob, gt))
        self._m.append(published_m(prob, gt))

    def __len__(self) -> int:
        return len(self._a)

    def best_threshold(self) -> float:
        return max(self.thresholds, key=lambda t: (self.counts[t].tol()["f1"], -abs(t - 0.5)))

    def summary(self, threshold: float) -> dict:
        t = self._closest(threshold)
        c = self.counts[t]

        def mean(rows: list[dict[str, float]]) -> dict[str, float]:
            return {k: float(np.mean([r[k] for r in rows])) if rows else 0.0 for k in ("precision", "recall", "f1", "iou")}

        return {
            "threshold": t,
            "images": len(self),
            "strict": c.strict(),
            "tol2": c.tol(),
            "published_A": mean(self._a),
            "published_M": mean(self._m),
            "counts": {"tp": c.tp, "predicted": c.pred, "ground_truth": c.gt,
                       "predicted_correct_tol": c.pred_correct_tol, "ground_truth_found_tol": c.gt_found_tol},
            "definitions": DEFINITIONS,
        }

    def curve(self) -> list[dict[str, float]]:
        """Set-level F1 (strict and 2-pixel) at every threshold: what picking a threshold looks at."""
        return [{"threshold": t, "f1": self.counts[t].strict()["f1"], "f1_tol": self.counts[t].tol()["f1"],
                 "iou": self.counts[t].strict()["iou"]} for t in self.thresholds]

    def images_at(self, threshold: float) -> list[ImageResult]:
        return list(self.per_image[self._closest(threshold)])

    def _closest(self, threshold: float) -> float:
        t = min(self.thresholds, key=lambda x: abs(x - threshold))
        if abs(t - threshold) > 1e-6:
            raise ValueError(f"threshold {threshold} was not accumulated; have {list(self.thresholds)}")
        return t


def evaluate_masks(pairs: Iterable[tuple[np.ndarray, np.ndarray]], threshold: float = 0.5) -> dict:
    """Convenience: every metric of (probability, raw ground truth) pairs at one threshold."""
    ms = MetricSet(thresholds=(threshold,))
    for prob, gt in pairs:
        ms.update(prob, gt)
    return ms.summary(threshold)


def mean_over_sets(per_set: dict[str, MetricSet]) -> tuple[float, float, dict[str, dict[str, float]]]:
    """(threshold, mean F1(2px), each set's figures there): the best common threshold of several sets
    by the mean over sets of each set's own F1(2px), so that a small set counts as much as a large one
    and no set's pixel count outvotes the others.  The sets must share one threshold grid."""
    sets = list(per_set.values())
    grid = sets[0].thresholds
    if any(tuple(m.thresholds) != tuple(grid) for m in sets):
        raise ValueError("mean_over_sets: the sets were accumulated at different thresholds")

    def mean_tol(t: float) -> float:
        return float(np.mean([m.counts[t].tol()["f1"] for m in sets]))

    t = max(grid, key=lambda t: (mean_tol(t), -abs(t - 0.5)))
    figures = {name: {"f1_tol": m.counts[t].tol()["f1"], "f1": m.counts[t].strict()["f1"],
                      "iou": m.counts[t].strict()["iou"], "images": len(m)} for name, m in per_set.items()}
    return t, mean_tol(t), figures
