"""The published augmentations: one of nine choices per sample.

none (3 of 9), horizontal flip, vertical flip, saturation x[0.2, 0.8], contrast x[0.2, 0.8],
brightness +-0.5, hue +-0.5 (fractions of the [0, 1] intensity range and of the hue circle, as
TensorFlow's ``tf.image.random_*`` ops that the original used).  The original drew one choice per
batch; here each sample draws its own, which gives the same mix with more variety per batch.
Flips move the labels with the image; colour changes leave them alone.
"""
from __future__ import annotations

import cv2
import numpy as np

CHOICES = ("none", "none", "none", "hflip", "vflip", "saturation", "contrast", "brightness", "hue")


def _hsv(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_BGR2HSV)  # H in degrees, S and V in [0, 1]


def _bgr(hsv: np.ndarray) -> np.ndarray:
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR) * 255.0, 0, 255).astype(np.uint8)


def saturation(img: np.ndarray, factor: float) -> np.ndarray:
    hsv = _hsv(img)
    hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0, 1)
    return _bgr(hsv)


def contrast(img: np.ndarray, factor: float) -> np.ndarray:
    f = img.astype(np.float32)
    mean = f.mean(axis=(0, 1), keepdims=True)
    return np.clip((f - mean) * factor + mean, 0, 255).astype(np.uint8)


def brightness(img: np.ndarray, delta: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) + delta * 255.0, 0, 255).astype(np.uint8)


def hue(img: np.ndarray, delta: float) -> np.ndarray:
    hsv = _hsv(img)
    hsv[..., 0] = np.mod(hsv[..., 0] + delta * 360.0, 360.0)
    return _bgr(hsv)


def apply(choice: str, rng: np.random.Generator, img: np.ndarray, target: np.ndarray, soft: np.ndarray | None):
    """Apply one named augmentation; returns (image, target, soft) with fresh contiguous arrays."""
    if choice == "hflip":
        return img[:, ::-1].copy(), target[:, ::-1].copy(), None if soft is None else soft[:, ::-1].copy()
    if choice == "vflip":
        return img[::-1].copy(), target[::-1].copy(), None if soft is None else soft[::-1].copy()
    if choice == "saturation":
        img = saturation(img, rng.uniform(0.2, 0.8))
    elif choice == "contrast":
        img = contrast(img, rng.uniform(0.2, 0.8))
    elif choice == "brightness":
        img = brightness(img, rng.uniform(-0.5, 0.5))
    elif choice == "hue":
        img = hue(img, rng.uniform(-0.5, 0.5))
    elif choice != "none":
        raise ValueError(f"unknown augmentation {choice!r}; known: {', '.join(sorted(set(CHOICES)))}")
    return img, target, soft


def photometric_and_flip(rng: np.random.Generator, img: np.ndarray, target: np.ndarray, soft: np.ndarray | None):
    """Draw one of the nine published choices and apply it."""
    return apply(CHOICES[rng.integers(len(CHOICES))], rng, img, target, soft)
