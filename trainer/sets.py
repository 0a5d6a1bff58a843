"""Open the training and validation sets that a run's settings name."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from models.registry import variant_defaults
from trainer.config import TrainSettings
from trainer.errors import ConfigError
from trainer.data import CropConfig, CropDataset, DataSpec, Pair, list_pairs, training_pairs

log = logging.getLogger(__name__)


def train_specs(cfg: TrainSettings) -> list[DataSpec]:
    return [DataSpec.parse(s) for s in cfg.data]


def train_pair_sets(cfg: TrainSettings) -> list[tuple[list[Pair], float]]:
    """Pairs of every training set, with carved validation images removed, and their weights."""
    return [(training_pairs(s.root, s.split, cfg.val_fraction, cfg.val_seed), s.weight) for s in train_specs(cfg)]


def _spread(pairs: list[Pair], most: int) -> list[Pair]:
    if most and len(pairs) > most:
        # An even spread, not the first N: neighbouring names are often neighbouring frames.
        step = len(pairs) / most
        pairs = [pairs[int(i * step)] for i in range(most)]
    return pairs


def val_pairs(cfg: TrainSettings) -> list[Pair]:
    spec = DataSpec.parse(cfg.val_data, "val") if cfg.val_data else DataSpec(train_specs(cfg)[0].root, "val")
    return _spread(list_pairs(spec.root, spec.split, cfg.val_fraction, cfg.val_seed), cfg.val_max_images)


def val_sets(cfg: TrainSettings) -> dict[str, list[Pair]]:
    """Validation images by set name: each training set's own val split (at most ``val_max_images`` of
    each, a fixed even spread), or the one ``val_pairs`` gives (``--val-data``, ``--val-sets first``).

    A training set without any val split (no ``val``/``valid`` folder or entry and no ``train`` to
    carve from) is skipped with a log line; if none has one the first set's error stands.
    """
    if cfg.val_data or cfg.val_sets == "first":
        pairs = val_pairs(cfg)
        return {pairs[0].dataset if pairs else "val": pairs}
    out: dict[str, list[Pair]] = {}
    first_error: ConfigError | None = None
    for spec in train_specs(cfg):
        name = spec.root.name
        if name in out:
            continue
        try:
            out[name] = _spread(list_pairs(spec.root, "val", cfg.val_fraction, cfg.val_seed), cfg.val_max_images)
        except ConfigError as e:
            first_error = first_error or e
            log.warning("event=no_val_split set=%s why=%r", spec.root, str(e))
    if not out:
        raise first_error or ConfigError("no validation set")
    log.info("event=val_sets %s", " ".join(f"{k}={len(v)}" for k, v in out.items()))
    return out


def crop_dataset(cfg: TrainSettings, sets: Sequence[tuple[Sequence[Pair], float]],
                 soft_labels: dict[Path, Sequence[Path]] | None = None) -> CropDataset:
    crop = CropConfig(crop=cfg.crop, scale=(cfg.scale_min, cfg.scale_max), max_aspect=cfg.max_aspect,
                      dilate_kernel=cfg.dilate_kernel, dilate_iterations=cfg.dilation, augment=cfg.augment,
                      distractor_prob=cfg.distractor_prob, spec=variant_defaults(cfg.arch))
    ds = CropDataset(sets, crop, cfg.samples_per_epoch, cfg.seed, soft_labels)
    log.info("event=data train=%s val_from=%s dilation=%dx%d*%d distractor_prob=%g",
             [f"{s}" for s in cfg.data], cfg.val_data or ("first train set" if cfg.val_sets == "first" else "each set"),
             cfg.dilate_kernel, cfg.dilate_kernel, cfg.dilation, cfg.distractor_prob if cfg.augment else 0.0)
    return ds
