"""Image/mask pairs on disk, splits, and the random-crop training set.

A dataset is any folder with ``images/NAME.*`` beside ``masks/NAME.png`` (0 = background,
255 = crack).  Splits come from, in this order: a ``split.json`` in the folder (CrackForest:
``{"train": [...], "test": [...]}``), a sub-folder named after the split (Crack500 crops:
``train/``, ``valid/``), or, for ``val`` only, a reproducible slice carved out of ``train``.

Every pair is read and checked once when a set is opened, so a missing mask, an unreadable file
or a size mismatch stops the run at start-up with the file's name instead of mid-epoch.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from models.preprocess import InputSpec, padded
from models.preprocess import normalise as _normalise
from models.registry import DEFAULT_VARIANT, variant_defaults
from trainer.errors import ConfigError, DataError, MissingInput

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VAL_ALIASES = ("val", "valid", "validation")


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path
    dataset: str

    @property
    def name(self) -> str:
        return self.image.stem


@dataclass(frozen=True)
class DataSpec:
    """One dataset on the command line: ``PATH[:SPLIT][@WEIGHT]``, e.g. ``crack500-crops:train@0.5``."""

    root: Path
    split: str = "train"
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str, default_split: str = "train") -> "DataSpec":
        weight = 1.0
        if "@" in text:
            text, w = text.rsplit("@", 1)
            try:
                weight = float(w)
            except ValueError as e:
                raise ConfigError(f"dataset {text!r}: weight {w!r} is not a number") from e
            if not weight > 0:
                raise ConfigError(f"dataset {text!r}: weight must be > 0, got {weight}")
        split = default_split
        head, sep, tail = text.rpartition(":")
        if sep and tail and "/" not in tail:
            text, split = head, tail
        return cls(Path(text), split, weight)

    def __str__(self) -> str:
        return f"{self.root}:{self.split}@{self.weight:g}"


def _pairs_in(folder: Path, dataset: str, names: Sequence[str] | None = None) -> list[Pair]:
    img_dir, mask_dir = folder / "images", folder / "masks"
    if not img_dir.is_dir():
        raise MissingInput(f"{img_dir}: no images/ folder (expected images/NAME.jpg beside masks/NAME.png)")
    if not mask_dir.is_dir():
        raise MissingInput(f"{mask_dir}: no masks/ folder beside {img_dir}")
    by_stem = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if names is None:
        names = sorted(by_stem)
    pairs = []
    for name in names:
        image = by_stem.get(name)
        if image is None:
            raise MissingInput(f"{img_dir / name}.*: image listed in the split but not found")
        mask = mask_dir / f"{name}.png"
        if not mask.exists():
            raise DataError(f"{mask}: mask missing for image {image}")
        pairs.append(Pair(image, mask, dataset))
    if not pairs:
        raise MissingInput(f"{img_dir}: no images found")
    return pairs


def carve_validation(pairs: Sequence[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Split ``pairs`` into (train, val) the same way every time for the same names and seed."""
    ordered = sorted(pairs, key=lambda p: p.name)
    n_val = max(1, round(len(ordered) * fraction))
    order = np.random.default_rng(seed).permutation(len(ordered))
    val_idx = set(order[:n_val].tolist())
    train = [p for i, p in enumerate(ordered) if i not in val_idx]
    val = [p for i, p in enumerate(ordered) if i in val_idx]
    return train, val


def list_pairs(root: str | Path, split: str = "train", val_fraction: float = 0.1, val_seed: int = 0) -> list[Pair]:
    """The pairs of one split of one dataset folder (see the module docstring for the rules)."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInput(f"{root}: dataset folder not found")
    tag = root.name
    split_file = root / "split.json"
    if split_file.exists():
        try:
            splits = json.loads(split_file.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{split_file}: not valid JSON: {e}") from e
        if split in splits:
            return _pairs_in(root, tag, [str(n) for n in splits[split]])
        if split in VAL_ALIASES and "train" in splits:
            return carve_validation(_pairs_in(root, tag, [str(n) for n in splits["train"]]), val_fraction, val_seed)[1]
        raise ConfigError(f"{split_file}: no split {split!r} (has: {', '.join(splits)})")
    candidates = [split] + (list(VAL_ALIASES) if split in VAL_ALIASES else [])
    for sub in candidates:
        if (root / sub / "images").is_dir():
            return _pairs_in(root / sub, tag)
    if split in VAL_ALIASES and (root / "train" / "images").is_dir():
        return carve_validation(_pairs_in(root / "train", tag), val_fraction, val_seed)[1]
    if (root / "images").is_dir() and split in ("all", "train"):
        return _pairs_in(root, tag)
    raise ConfigError(f"{root}: cannot find split {split!r} (no split.json entry, no {split}/images folder)")


def training_pairs(root: str | Path, split: str, val_fraction: float, val_seed: int) -> list[Pair]:
    """Training pairs with any carved validation images removed, so val never leaks into train."""
    pairs = list_pairs(root, split, val_fraction, val_seed)
    if split != "train":
        return pairs
    try:
        val = list_pairs(root, "val", val_fraction, val_seed)
    except ConfigError:
        return pairs
    held = {p.image for p in val}
    return [p for p in pairs if p.image not in held]


def read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: unreadable image")
    return img


def read_mask(path: Path, shape: tuple[int, int] | None = None, image: Path | None = None) -> np.ndarray:
    """A boolean crack mask; with ``shape``, refuse one whose size differs from its image."""
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise DataError(f"{path}: unreadable mask")
    if shape is not None and m.shape != shape:
        raise DataError(f"{path}: mask is {m.shape[1]}x{m.shape[0]} but image {image} is {shape[1]}x{shape[0]}")
    return m > 127


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    img = read_image(pair.image)
    return img, read_mask(pair.mask, img.shape[:2], pair.image)


def dilate(mask: np.ndarray, kernel: int, iterations: int) -> np.ndarray:
    """The published label dilation (3x3, 3 iterations); 0 iterations returns the mask unchanged."""
    if iterations <= 0 or kernel <= 1:
        return mask
    k = np.ones((kernel, kernel), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), k, iterations=iterations) > 0


@dataclass
class CropConfig:
    """What a training sample looks like; filled from the run's settings."""

    crop: int = 224
    scale: tuple[float, float] = (0.6, 1.6)
    max_aspect: float = 1.6
    dilate_kernel: int = 3
    dilate_iterations: int = 0
    augment: bool = True
    # Share of crops that get road distractors drawn in (trainer.augment.distractors), label untouched.
    distractor_prob: float = 0.0
    # Channel order and normalisation of the variant being trained (its registry entry).
    spec: InputSpec = field(default_factory=lambda: variant_defaults(DEFAULT_VARIANT))
    extra: dict = field(default_factory=dict)


class CropDataset:
    """Random crops from one or more datasets, ``samples_per_epoch`` per epoch.

    Each sample picks a dataset by weight, an image uniformly, then applies scale and aspect
    jitter (the daemon squeezes 480x320 frames into 448x448, and unseen roads come at their own
    scale), a random crop, and the published augmentations.  The random state of a sample is a
    function of (seed, epoch, index) only, so a resumed run sees the same samples and worker
    processes need no shared state.  Soft labels, when given, travel through the same geometry.
    """

    def __init__(self, sets: Sequence[tuple[Sequence[Pair], float]], cfg: CropConfig, samples_per_epoch: int,
                 seed: int = 0, soft_labels: dict[Path, Sequence[Path]] | None = None) -> None:
        from trainer.augment import distractors, photometric_and_flip

        self._augment = photometric_and_flip
        self._distractors = distractors
        if cfg.crop % 4:
            raise ConfigError(f"crop {cfg.crop} is not a multiple of 4 (try {padded(cfg.crop, 4)})")
        self.cfg = cfg
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = seed
        self.epoch = 0
        weights = np.array([w for _, w in sets], dtype=np.float64)
        self.probs = weights / weights.sum()
        self.images: list[list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]] = []
        for pairs, _ in sets:
            loaded = []
            for p in pairs:
                img, mask = read_pair(p)
                target = dilate(mask, cfg.dilate_kernel, cfg.dilate_iterations)
                soft = None
                if soft_labels is not None:
                    files = soft_labels.get(p.image.resolve())
                    if files is None:
                        raise DataError(f"{p.image}: no soft labels for this training image")
                    soft = read_soft_labels(files, img.shape[:2])
                loaded.append((img, target, soft))
            if not loaded:
                raise ConfigError("a training dataset has no images")
            self.images.append(loaded)
        log.info("event=dataset_ready sets=%d images=%s samples_per_epoch=%d",
                 len(self.images), [len(s) for s in self.images], self.samples_per_epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        s = rng.choice(len(self.images), p=self.probs)
        img, target, soft = self.images[s][rng.integers(len(self.images[s]))]
        img, target, soft = self._jitter(rng, img, target, soft)
        img, target, soft = self._crop(rng, img, target, soft)
        if self.cfg.augment:
            # Before the colour changes, so that paint and shadows get the same jitter as the road.
            img = self._distractors(rng, img, target, self.cfg.distractor_prob)
            img, target, soft = self._augment(rng, img, target, soft)
        out = {"image": _normalise(img, self.cfg.spec), "target": target[None].astype(np.float32)}
        if soft is not None:
            out["soft"] = soft.transpose(2, 0, 1).astype(np.float32).copy()
        return out

    def _jitter(self, rng: np.random.Generator, img, target, soft):
        lo, hi = self.cfg.scale
        if lo == hi == 1.0 and self.cfg.max_aspect == 1.0:
            return img, target, soft
        s = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        a = math.exp(rng.uniform(-math.log(self.cfg.max_aspect), math.log(self.cfg.max_aspect)))
        h, w = target.shape
        nh, nw = max(4, round(h * s / math.sqrt(a))), max(4, round(w * s * math.sqrt(a)))
        shrink = nh * nw < h * w
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        img = cv2.resize(img, (nw, nh), interpolation=interp)
        # Thin cracks fade when shrunk; 0.35 keeps a 1-px crack down to about 1/3 scale.
        target = cv2.resize(target.astype(np.float32), (nw, nh), interpolation=interp) > 0.35
        if soft is not None:
            soft = cv2.resize(soft, (nw, nh), interpolation=interp)
            soft = soft[..., None] if soft.ndim == 2 else soft
        return img, target, soft

    def _crop(self, rng: np.random.Generator, img, target, soft):
        c = self.cfg.crop
        h, w = target.shape
        ph, pw = max(0, c - h), max(0, c - w)
        if ph or pw:
            # Mirror padding keeps road texture and the label consistent with it.
            pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
            img = np.pad(img, pad + ((0, 0),), mode="reflect")
            target = np.pad(target, pad, mode="reflect")
            if soft is not None:
                soft = np.pad(soft, pad + ((0, 0),), mode="reflect")
            h, w = target.shape
        y = rng.integers(h - c + 1)
        x = rng.integers(w - c + 1)
        sl = (slice(y, y + c), slice(x, x + c))
        return img[sl], target[sl], (soft[sl] if soft is not None else None)


class StepShares:
    """The sample indices one rank trains on, step by step: a batch sampler for the DataLoader.

    Step ``s`` of an epoch is samples ``s*B .. s*B+B-1`` of the global batch ``B`` (the partial batch
    at the end is dropped); of ``world`` ranks, rank ``r`` takes the ``r``-th slice of ``B/world``.
    The shares are disjoint and union to exactly the one-process batch, and a CropDataset sample
    depends only on (seed, epoch, index), so N processes train on the same crops as one.
    """

    def __init__(self, samples: int, global_batch: int, rank: int = 0, world: int = 1) -> None:
        if global_batch % world:
            raise ConfigError(f"batch_size {global_batch} does not split over {world} processes")
        self.per_rank = global_batch // world
        self.offset = rank * self.per_rank
        self.global_batch = global_batch
        self.steps = samples // global_batch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for s in range(self.steps):
            start = s * self.global_batch + self.offset
            yield list(range(start, start + self.per_rank))


def read_soft_labels(paths: Sequence[Path], shape: tuple[int, int]) -> np.ndarray:
    """The teacher's four 8-bit soft labels of one image as HxWx4 float32 in [0, 1]."""
    chans = []
    for p in paths:
        m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise DataError(f"{p}: unreadable soft label")
        if m.shape != shape:
            raise DataError(f"{p}: soft label is {m.shape[1]}x{m.shape[0]}, its image is {shape[1]}x{shape[0]}")
        chans.append(m.astype(np.float32) / 255.0)
    return np.stack(chans, axis=-1)


def collate(samples: list[dict[str, np.ndarray]]):
    import torch

    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}
