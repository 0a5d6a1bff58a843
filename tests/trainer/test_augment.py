"""Road distractors: drawn into the picture, never into the label; the crack-free synthetic road."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.trainer.conftest import draw_crack_pair
from trainer import augment
from trainer.data import CropConfig, CropDataset, list_pairs


def _road(seed: int = 0, h: int = 64, w: int = 96) -> tuple[np.ndarray, np.ndarray]:
    img, mask = draw_crack_pair(np.random.default_rng(seed), h, w)
    return img, mask > 0


@pytest.mark.parametrize("kind", augment.DISTRACTORS)
def test_each_distractor_changes_the_picture_reproducibly_and_keeps_its_shape(kind):
    img, crack = _road()
    a = augment.draw_distractor(kind, np.random.default_rng(3), img, crack)
    b = augment.draw_distractor(kind, np.random.default_rng(3), img, crack)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    changed = np.abs(a.astype(int) - img.astype(int)).max(axis=2) > 8
    assert changed.mean() > 0.002, f"{kind} drew (almost) nothing"


@pytest.mark.parametrize("kind", ["lane_marking", "slab_joint", "road_stud", "oil_stain", "repair_patch", "tar_spots"])
def test_opaque_distractors_leave_the_labelled_crack_visible(kind):
    img, crack = _road(1)
    for seed in range(6):
        out = augment.draw_distractor(kind, np.random.default_rng(seed), img, crack)
        assert np.array_equal(out[crack], img[crack]), f"{kind} painted over the labelled crack"


def test_distractors_never_touch_the_label_and_follow_their_probability():
    img, crack = _road(2)
    before = crack.copy()
    drawn = sum(not np.array_equal(augment.distractors(np.random.default_rng(s), img, crack, 0.5), img)
                for s in range(200))
    assert np.array_equal(crack, before)
    assert 60 < drawn < 140  # about half of 200
    assert all(np.array_equal(augment.distractors(np.random.default_rng(s), img, crack, 0.0), img) for s in range(20))


def test_a_slab_joint_is_a_straight_dark_line_across_the_crop():
    img = np.full((96, 96, 3), 150, np.uint8)
    out = augment.slab_joint(np.random.default_rng(4), img)[0]
    dark = np.argwhere(out.mean(axis=2) < 120).astype(np.float64)
    assert len(dark) > 60  # it spans the crop, not a dot
    # Straight: the dark pixels' second principal axis is the line's width, a few px at most.
    centred = dark - dark.mean(axis=0)
    width = np.sqrt(np.linalg.eigvalsh(np.cov(centred.T))[0])
    assert width < 3.0


def test_an_unknown_distractor_is_named():
    img, _ = _road()
    with pytest.raises(ValueError, match="unknown distractor 'zebra'"):
        augment.draw_distractor("zebra", np.random.default_rng(0), img)


def test_synthetic_road_is_crack_free_texture_with_the_asked_distractor():
    a = augment.synthetic_road(np.random.default_rng(0), 64, 96, n_distractors=0)
    b = augment.synthetic_road(np.random.default_rng(0), 64, 96, n_distractors=1, kinds=("lane_marking",))
    assert a.shape == (64, 96, 3) and a.dtype == np.uint8 and a.std() > 4  # texture, not a flat grey
    assert b.mean() > a.mean()  # white paint brightens it


def test_crop_dataset_draws_distractors_with_the_label_unchanged(tiny_data):
    pairs = list_pairs(tiny_data, "train")
    plain = CropDataset([(pairs, 1.0)], CropConfig(crop=32, distractor_prob=0.0), 16, seed=5)
    drawn = CropDataset([(pairs, 1.0)], CropConfig(crop=32, distractor_prob=1.0), 16, seed=5)
    differ = 0
    for i in range(16):
        a, b = plain[i], drawn[i]
        # Geometry is drawn before the distractors: the same crop, so the same crack pixels (a flip
        # chosen afterwards may differ, which moves them but keeps their number).
        assert a["target"].sum() == b["target"].sum()
        differ += not np.allclose(a["image"], b["image"])
    assert differ >= 12


def test_a_repair_patch_is_one_region_of_another_level():
    img = np.full((96, 128, 3), 120, np.uint8)
    for seed in range(8):
        out = augment.repair_patch(np.random.default_rng(seed), img)[0].astype(np.float32).mean(axis=2)
        inside = np.abs(cv2.GaussianBlur(out, (0, 0), 3) - 120) > 6
        n, _ = cv2.connectedComponents(inside.astype(np.uint8))
        assert inside.mean() > 0.03 and n - 1 == 1, f"seed {seed}: not one patch"
        assert abs(np.median(out[inside]) - 120) > 12, f"seed {seed}: the patch is not another level"
