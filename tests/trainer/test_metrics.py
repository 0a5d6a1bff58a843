"""Metrics on hand-made masks whose answers can be counted by hand."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.metrics import MetricSet, count, disc, evaluate_masks, published_a, published_m


def blank(h: int = 20, w: int = 20) -> np.ndarray:
    return np.zeros((h, w), bool)


def test_disc_of_radius_two_has_thirteen_pixels_and_no_corners():
    d = disc(2)
    assert d.shape == (5, 5) and d.sum() == 13
    assert d[2, 0] and d[0, 2] and d[1, 1]          # (2,0) and (1,1) are inside
    assert not d[0, 1] and not d[0, 0]              # (2,1): 4+1 = 5 > 4 is outside


@pytest.mark.parametrize("dy,dx,inside", [(0, 2, True), (2, 0, True), (1, 1, True), (1, 2, False), (0, 3, False)])
def test_tolerance_uses_the_radius_two_disc(dy, dx, inside):
    gt, pred = blank(), blank()
    gt[10, 10] = True
    pred[10 + dy, 10 + dx] = True
    c = count(pred, gt)
    assert c.tp == 0
    assert c.pred_correct_tol == int(inside) and c.gt_found_tol == int(inside)


def test_perfect_prediction_scores_one_everywhere():
    gt = blank()
    gt[5, 2:18] = True
    s = evaluate_masks([(gt.astype(np.float32), gt)])
    for group in ("strict", "tol2", "published_M"):
        assert s[group]["f1"] == pytest.approx(1.0), group
    assert s["strict"]["iou"] == pytest.approx(1.0)
    # "A" compares with the dilated ground truth: a perfect thin prediction misses most of it.
    assert s["published_A"]["precision"] == 1.0 and s["published_A"]["recall"] < 0.5


def test_a_line_two_pixels_off_is_wrong_strictly_but_right_with_tolerance():
    gt, pred = blank(), blank()
    gt[8, 2:18] = True
    pred[10, 2:18] = True
    s = evaluate_masks([(pred.astype(np.float32), gt)])
    assert s["strict"]["f1"] == 0.0 and s["strict"]["iou"] == 0.0
    assert s["tol2"]["precision"] == 1.0 and s["tol2"]["recall"] == 1.0


def test_strict_counts_by_hand():
    gt, pred = blank(), blank()
    gt[5, 0:10] = True            # 10 ground-truth pixels
    pred[5, 5:15] = True          # 10 predicted, 5 of them on the crack
    s = evaluate_masks([(pred.astype(np.float32), gt)])["strict"]
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5)
    assert s["iou"] == pytest.approx(5 / 15)


def test_counts_are_summed_over_the_set_not_averaged_per_image():
    g1, p1 = blank(), blank()
    g1[3, 0:10] = True
    p1[3, 0:10] = True            # 10 of 10 found
    g2, p2 = blank(), blank()
    g2[3, 0:20] = True
    g2[15, 0:10] = True           # 30 ground-truth pixels, none predicted
    s = evaluate_masks([(p1.astype(np.float32), g1), (p2.astype(np.float32), g2)])
    assert s["strict"]["recall"] == pytest.approx(10 / 40)
    assert s["tol2"]["recall"] == pytest.approx(10 / 40)
    assert s["images"] == 2


def test_threshold_is_inclusive_and_applies_to_probabilities():
    gt = blank()
    gt[4, 4] = True
    prob = np.zeros((20, 20), np.float32)
    prob[4, 4] = 0.5
    prob[12, 12] = 0.45
    assert evaluate_masks([(prob, gt)], threshold=0.5)["strict"]["precision"] == 1.0
    assert evaluate_masks([(prob, gt)], threshold=0.45)["strict"]["precision"] == 0.5


def test_published_a_is_lenient_against_the_dilated_ground_truth():
    gt, pred = blank(), blank()
    gt[10, 2:18] = True
    pred[12, 2:18] = True         # 2 rows off: inside the 3x3 x3 dilation (reaches 3 px)
    a = published_a(pred.astype(np.float32), gt)
    assert a["precision"] == 1.0
    assert a["recall"] < 0.3      # the dilated ground truth is 7 rows thick, one is predicted


def test_published_m_uses_threshold_point_four_and_raw_recall():
    gt = blank()
    gt[10, 2:18] = True
    prob = np.zeros((20, 20), np.float32)
    prob[10, 2:18] = 0.41          # above 0.4, below 0.5
    m = published_m(prob, gt)
    assert m["precision"] == 1.0 and m["recall"] == 1.0
    assert published_a(prob, gt)["f1"] == 0.0


def test_empty_prediction_on_empty_ground_truth_is_perfect_per_image():
    ms = MetricSet(thresholds=(0.5,))
    ms.update(np.zeros((8, 8), np.float32), blank(8, 8), "empty")
    r = ms.images_at(0.5)[0]
    assert (r.f1_tol, r.f1, r.iou) == (1.0, 1.0, 1.0)
    assert ms.summary(0.5)["published_A"]["f1"] == 1.0


def test_best_threshold_maximises_tolerance_f1_and_unknown_thresholds_are_refused():
    gt = blank()
    gt[10, 2:18] = True
    prob = np.zeros((20, 20), np.float32)
    prob[10, 2:18] = 0.7
    prob[0, :] = 0.3              # noise that only a low threshold keeps
    ms = MetricSet(thresholds=(0.2, 0.5, 0.8))
    ms.update(prob, gt)
    assert ms.best_threshold() == 0.5
    assert [round(c["f1_tol"], 3) for c in ms.curve()][1] == 1.0
    with pytest.raises(ValueError, match="not accumulated"):
        ms.summary(0.33)


def test_size_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in size"):
        count(blank(10, 10), blank(10, 12))
