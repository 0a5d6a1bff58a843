"""Open the training and validation sets that a run's settings name."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from models.registry import variant_defaults
from trainer.config import TrainSettings
from trainer.data import CropConfig, CropDataset, DataSpec, Pair, list_pairs, training_pairs

log = logging.getLogger(__name__)


def train_specs(cfg: TrainSettings) -> list[DataSpec]:
    return [DataSpec.parse(s) for s in cfg.data]


def train_pair_sets(cfg: TrainSettings) -> list[tuple[list[Pair], float]]:
    """Pairs of every training set, with carved validation images removed, and their weights."""
    return [(training_pairs(s.root, s.split, cfg.val_fraction, cfg.val_seed), s.weight) for s in train_specs(cfg)]


def val_pairs(cfg: TrainSettings) -> list[Pair]:
    spec = DataSpec.parse(cfg.val_data, "val") if cfg.val_data else DataSpec(train_specs(cfg)[0].root, "val")
    pairs = list_pairs(spec.root, spec.split, cfg.val_fraction, cfg.val_seed)
    if cfg.val_max_images and len(pairs) > cfg.val_max_images:
        # An even spread, not the first N: neighbouring names are often neighbouring frames.
        step = len(pairs) / cfg.val_max_images
        pairs = [pairs[int(i * step)] for i in range(cfg.val_max_images)]
    return pairs


def crop_dataset(cfg: TrainSettings, sets: Sequence[tuple[Sequence[Pair], float]],
                 soft_labels: dict[Path, Sequence[Path]] | None = None) -> CropDataset:
    crop = CropConfig(crop=cfg.crop, scale=(cfg.scale_min, cfg.scale_max), max_aspect=cfg.max_aspect,
                      dilate_kernel=cfg.dilate_kernel, dilate_iterations=cfg.dilation, augment=cfg.augment,
                      spec=variant_defaults(cfg.arch))
    ds = CropDataset(sets, crop, cfg.samples_per_epoch, cfg.seed, soft_labels)
    log.info("event=data train=%s val_from=%s dilation=%dx%d*%d",
             [f"{s}" for s in cfg.data], cfg.val_data or "first train set", cfg.dilate_kernel, cfg.dilate_kernel,
             cfg.dilation)
    return ds
