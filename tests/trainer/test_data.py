"""Pairs, splits, mismatches that name the file, and the random-crop training set."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer import augment
from trainer.data import (CropConfig, CropDataset, DataSpec, carve_validation, dilate, list_pairs, read_pair,
                          training_pairs)
from trainer.errors import ConfigError, DataError, MissingInput


def test_data_spec_parses_path_split_and_weight():
    assert DataSpec.parse("/d/crackforest") == DataSpec(Path("/d/crackforest"), "train", 1.0)
    assert DataSpec.parse("../d/crack500-crops:valid@0.5") == DataSpec(Path("../d/crack500-crops"), "valid", 0.5)
    assert DataSpec.parse("/d/x@2", default_split="val") == DataSpec(Path("/d/x"), "val", 2.0)
    with pytest.raises(ConfigError, match="weight"):
        DataSpec.parse("/d/x@heavy")


def test_split_json_and_a_reproducible_validation_carve(tiny_data):
    train = list_pairs(tiny_data, "train")
    test = list_pairs(tiny_data, "test")
    assert [p.name for p in test] == ["006", "007"] and len(train) == 6
    val = list_pairs(tiny_data, "val", val_fraction=0.34, val_seed=0)
    assert val == list_pairs(tiny_data, "val", val_fraction=0.34, val_seed=0)
    assert len(val) == 2 and {p.name for p in val} <= {p.name for p in train}
    kept = training_pairs(tiny_data, "train", 0.34, 0)
    assert len(kept) == 4 and not {p.image for p in kept} & {p.image for p in val}
    assert carve_validation(train, 0.34, 1)[1] != val or len(train) < 3


def test_sub_folder_layout_like_crack500(tmp_path, make_dataset):
    write_dataset = make_dataset
    write_dataset(tmp_path / "c5" / "train", n=3)
    write_dataset(tmp_path / "c5" / "valid", n=2, seed=1)
    assert len(list_pairs(tmp_path / "c5", "train")) == 3
    assert len(list_pairs(tmp_path / "c5", "val")) == 2
    with pytest.raises(ConfigError, match="cannot find split 'test'"):
        list_pairs(tmp_path / "c5", "test")


def test_missing_mask_names_the_file(tmp_path, make_dataset):
    root = make_dataset(tmp_path / "d", n=3, split={"train": ["000", "001", "002"]})
    (root / "masks" / "001.png").unlink()
    with pytest.raises(DataError, match=r"001\.png: mask missing") as e:
        list_pairs(root, "train")
    assert e.value.exit_code == 65


def test_size_mismatch_and_unreadable_files_name_the_file(tmp_path, make_dataset):
    root = make_dataset(tmp_path / "d", n=3, split={"train": ["000", "001", "002"]})
    cv2.imwrite(str(root / "masks" / "000.png"), np.zeros((10, 10), np.uint8))
    (root / "images" / "002.jpg").write_bytes(b"not a jpeg")
    pairs = {p.name: p for p in list_pairs(root, "train")}
    with pytest.raises(DataError, match=r"000\.png: mask is 10x10 but image .*000\.jpg is 96x64"):
        read_pair(pairs["000"])
    with pytest.raises(DataError, match=r"002\.jpg: unreadable image"):
        read_pair(pairs["002"])


def test_missing_folder_and_unknown_split(tmp_path, tiny_data):
    with pytest.raises(MissingInput, match="dataset folder not found"):
        list_pairs(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no split 'holdout'"):
        list_pairs(tiny_data, "holdout")


def test_crackforest_split_json_is_read_as_published(crackforest):
    CFD = crackforest
    assert json.loads((CFD / "split.json").read_text()).keys() >= {"train", "test"}
    assert len(list_pairs(CFD, "train")) == 72 and len(list_pairs(CFD, "test")) == 46
    assert len(list_pairs(CFD, "val")) == 7 and len(training_pairs(CFD, "train", 0.1, 0)) == 65


def test_dilation_as_published():
    m = np.zeros((15, 15), bool)
    m[7, 7] = True
    assert dilate(m, 3, 3).sum() == 49 and dilate(m, 3, 0).sum() == 1


def test_crops_are_reproducible_per_epoch_and_index_and_carry_soft_labels(tiny_data, tmp_path):
    pairs = list_pairs(tiny_data, "train")
    # Soft labels equal to the mask must still equal it after every geometric change.
    soft = {}
    for p in pairs:
        m = cv2.imread(str(p.mask), cv2.IMREAD_GRAYSCALE)
        files = []
        for o in "hxym":
            f = tmp_path / f"{p.name}_{o}.png"
            cv2.imwrite(str(f), m)
            files.append(f)
        soft[p.image.resolve()] = files
    cfg = CropConfig(crop=48, scale=(0.6, 1.6), max_aspect=1.6, dilate_iterations=0)
    ds = CropDataset([(pairs, 1.0)], cfg, samples_per_epoch=12, seed=3, soft_labels=soft)
    a = ds[5]
    assert a["image"].shape == (3, 48, 48) and a["target"].shape == (1, 48, 48) and a["soft"].shape == (4, 48, 48)
    assert a["image"].dtype == np.float32 and -1.0 <= a["image"].min() and a["image"].max() <= 1.0
    np.testing.assert_array_equal(ds[5]["image"], a["image"])
    ds.set_epoch(1)
    assert not np.array_equal(ds[5]["image"], a["image"])
    agree = [np.mean((ds[i]["soft"][3] > 0.5) == (ds[i]["target"][0] > 0.5)) for i in range(12)]
    assert min(agree) > 0.97


def test_crop_must_be_a_multiple_of_four(tiny_data):
    with pytest.raises(ConfigError, match="multiple of 4"):
        CropDataset([(list_pairs(tiny_data, "train"), 1.0)], CropConfig(crop=30), 4)


def test_mixing_follows_the_weights(tmp_path, tiny_data, make_dataset):
    other = make_dataset(tmp_path / "other", n=3, size=(40, 40), seed=5)
    ds = CropDataset([(list_pairs(tiny_data, "train"), 3.0), (list_pairs(other, "train"), 1.0)],
                     CropConfig(crop=32, scale=(1.0, 1.0), max_aspect=1.0, augment=False), 400)
    picks = [np.random.default_rng([0, 0, i]).choice(2, p=ds.probs) for i in range(400)]
    assert 0.68 < 1 - np.mean(picks) < 0.82


def test_flips_move_labels_and_colour_changes_do_not():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (8, 12, 3), dtype=np.uint8)
    target = np.zeros((8, 12), bool)
    target[1, 2] = True
    soft = target[..., None].astype(np.float32).repeat(4, axis=2)
    i2, t2, s2 = augment.apply("hflip", rng, img, target, soft)
    assert t2[1, 9] and s2[1, 9, 0] == 1.0 and np.array_equal(i2[:, ::-1], img)
    i3, t3, _ = augment.apply("vflip", rng, img, target, None)
    assert t3[6, 2]
    for choice in ("saturation", "contrast", "brightness", "hue"):
        i4, t4, s4 = augment.apply(choice, rng, img, target, soft)
        assert i4.dtype == np.uint8 and i4.shape == img.shape and t4 is target and s4 is soft
    assert not np.array_equal(augment.brightness(img, 0.3), img)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.apply("rotate", rng, img, target, None)


def test_each_training_set_is_validated_on_its_own_val_split(tmp_path, make_dataset):
    from trainer.config import load_settings
    from trainer.sets import val_sets

    cfd = make_dataset(tmp_path / "cfd", n=12, split={"train": [f"{i:03d}" for i in range(12)]})
    make_dataset(tmp_path / "c5" / "train", n=4)
    make_dataset(tmp_path / "c5" / "valid", n=9, seed=1)
    lone = make_dataset(tmp_path / "lone", n=3, split={"test": ["000", "001", "002"]})  # no train, no val
    cfg = load_settings(None, data=[f"{cfd}:train@2", f"{tmp_path / 'c5'}:train", f"{lone}:test"],
                        val_max_images=5, val_fraction=0.25)
    sets = val_sets(cfg)
    assert list(sets) == ["cfd", "c5"]  # 'lone' has no val split: skipped, not fatal
    assert len(sets["cfd"]) == 3  # carved from train (25 % of 12), fewer than the cap
    assert len(sets["c5"]) == 5 and all(p.image.parent.parent.name == "valid" for p in sets["c5"])
    assert sets == val_sets(cfg)  # a fixed subset, the same every epoch
    first = val_sets(load_settings(None, data=cfg.data, val_max_images=5, val_fraction=0.25, val_sets="first"))
    assert list(first) == ["cfd"] and first["cfd"] == sets["cfd"]


def test_the_combined_figure_is_the_mean_over_sets_at_one_threshold():
    from trainer.loop import combine_sets
    from trainer.metrics import MetricSet

    # Set a: a long crack, sure everywhere, plus false alarms at 0.5 far from it: best above 0.5.
    gt_a = np.zeros((60, 60), bool)
    gt_a[10, 2:58] = gt_a[30, 2:58] = True
    prob_a = np.where(gt_a, 0.9, 0.0).astype(np.float32)
    prob_a[50, 2:58] = 0.5
    # Set b: a short crack found only up to 0.4.  Pooled pixels would follow a; the mean follows both.
    gt_b = np.zeros((20, 20), bool)
    gt_b[10, 5:15] = True
    a, b = MetricSet(), MetricSet()
    a.update(prob_a, gt_a)
    b.update(np.where(gt_b, 0.4, 0.0).astype(np.float32), gt_b)
    out = combine_sets({"a": a, "b": b})
    assert out["val_threshold"] == pytest.approx(0.4)
    assert out["val_f1_tol@b"] == pytest.approx(1.0) and out["val_f1_tol@a"] < 0.9
    assert out["val_f1_tol"] == pytest.approx((out["val_f1_tol@a"] + out["val_f1_tol@b"]) / 2)
    pooled = MetricSet()
    pooled.update(prob_a, gt_a)
    pooled.update(np.where(gt_b, 0.4, 0.0).astype(np.float32), gt_b)
    assert pooled.best_threshold() > 0.5  # what summing the pixels would have picked
    one = combine_sets({"a": a})
    assert one["val_f1_tol"] == pytest.approx(a.counts[one["val_threshold"]].tol()["f1"])
    assert "val_f1_tol@a" not in one  # one set: the figures as before


def test_eval_on_several_sets_picks_one_threshold_by_their_mean_and_counts_false_alarms(exported, make_dataset,
                                                                                          tmp_path):
    import shutil

    from models.card import load_card
    from trainer.cli import main

    model = tmp_path / exported.name
    shutil.copy(exported, model)
    shutil.copy(exported.with_suffix(".json"), model.with_suffix(".json"))
    a = make_dataset(tmp_path / "a", n=6, seed=3)
    make_dataset(tmp_path / "b" / "train", n=2, seed=4)
    b = make_dataset(tmp_path / "b" / "valid", n=3, seed=5).parent
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(model), "--data", str(a), str(b), "--split", "val", "--val-fraction", "0.34",
                 "--mode", "native", "--pick-threshold", "--write-card", "--crack-free", "9", "--out", str(out)]) == 0
    combined = json.loads((out / "report.json").read_text())
    per = {n: json.loads((out / n / "report.json").read_text()) for n in ("a", "b")}
    assert combined["sets"]["a"]["images"] == 1 and combined["sets"]["b"]["images"] == 3
    # The threshold is the best of the mean of the two sets' curves, not of either alone.
    curves = [{c["threshold"]: c["f1_tol"] for c in per[n]["curve"]} for n in ("a", "b")]
    best = max(curves[0], key=lambda t: ((curves[0][t] + curves[1][t]) / 2, -abs(t - 0.5)))
    assert combined["threshold"] == pytest.approx(best)
    assert combined["mean_f1_tol"] == pytest.approx((curves[0][best] + curves[1][best]) / 2)
    card = load_card(model)
    assert card.threshold == combined["threshold"] and card.inference == "native"
    assert card.metrics["a+b:val@native"]["sets"]["b"]["f1_tol"] == pytest.approx(curves[1][best])
    assert card.metrics["b:val@native"]["threshold"] == combined["threshold"]
    far = per["a"]["false_positives"]["far_from_crack"]
    assert far["pixels"] > 0 and 0.0 <= far["rate"] <= 1.0 and far["flagged"] == round(far["rate"] * far["pixels"])
    syn = combined["false_positives"]["synthetic_crack_free"]
    assert syn["frames"] == 9 and set(syn["by_kind"]) == set(__import__("trainer.augment").augment.DISTRACTORS)
    assert 0.0 <= syn["pixel_rate"] <= 1.0 and 0.0 <= syn["frame_rate"] <= 1.0
