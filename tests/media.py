"""Small real media for tests: an mp4 of a road-like texture with a moving dark crack.

A module of its own (not a conftest) so that tests/conftest.py and tests/faults/faultkit.py
import the same function: several conftest.py files make ``from conftest import`` ambiguous.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: Path, n: int, size: tuple[int, int] = (96, 64), fps: float = 20.0) -> Path:
    """A real mp4 of ``n`` frames (W x H = size): grey road texture with a dark moving crack."""
    import cv2

    w, h = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert vw.isOpened(), f"OpenCV cannot write {path}"
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(100, 160, (h, w, 3), dtype=np.uint8)
        cv2.line(img, (i % w, 0), (w - 1 - i % w, h - 1), (30, 30, 30), 2)
        vw.write(img)
    vw.release()
    return path


def write_images(folder: Path, n: int, size: tuple[int, int] = (96, 64)) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    w, h = size
    for i in range(n):
        img = rng.integers(100, 160, (h, w, 3), dtype=np.uint8)
        cv2.line(img, (0, i * 5 % h), (w - 1, h - 1 - i * 5 % h), (20, 20, 20), 3)
        assert cv2.imwrite(str(folder / f"frame_{i:04d}.png"), img)
    return folder
