"""Shared fixtures: a tiny synthetic crack dataset on disk and one short plain-student run."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.cli import main

CFD = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "crackforest"


def draw_crack_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey road texture with a dark meandering 1-2 px crack, and its mask (0/255)."""
    img = np.clip(rng.normal(140, 18, (h, w, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    y = int(rng.integers(h // 4, 3 * h // 4))
    pts = []
    for x in range(0, w, 4):
        y = int(np.clip(y + rng.integers(-2, 3), 2, h - 3))
        pts.append((x, y))
    cv2.polylines(mask, [np.array(pts, np.int32)], False, 255, thickness=int(rng.integers(1, 3)))
    img[mask > 0] = (img[mask > 0] * 0.35).astype(np.uint8)
    return img, mask


def write_dataset(root: Path, n: int = 8, size: tuple[int, int] = (64, 96), seed: int = 0,
                  split: dict[str, list[str]] | None = None) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    names = [f"{i:03d}" for i in range(n)]
    for name in names:
        img, mask = draw_crack_pair(rng, *size)
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
    split = split or {"train": names[: n - 2], "test": names[n - 2:]}
    (root / "split.json").write_text(json.dumps(split))
    return root


@pytest.fixture(scope="session")
def make_dataset():
    """Factory: write_dataset(root, n, size, seed, split) for tests that need their own folder."""
    return write_dataset


@pytest.fixture(scope="session")
def crackforest() -> Path:
    if not CFD.exists():
        pytest.skip(f"CrackForest not found at {CFD}")
    return CFD


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "tiny")


def train_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--data", f"{data}:train", "--run-dir", str(run_dir), "--crop", "32", "--batch-size", "2",
            "--samples-per-epoch", "4", "--val-max-images", "1", "--val-size", "32", "--threads", "2",
            "--val-fraction", "0.34", "--device", "cpu", *extra]


@pytest.fixture(scope="session")
def train_argv():
    """train_args(data, run_dir, *extra): the tiny-crop flags every training test uses."""
    return train_args


@pytest.fixture(scope="session")
def student_run(tiny_data: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "plain"
    assert main(["student", "--plain", *train_args(tiny_data, run, "--epochs", "2")]) == 0
    return run


@pytest.fixture(scope="session")
def exported(student_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-student.onnx"
    assert main(["export", "--checkpoint", str(student_run / "best.pt"), "--out", str(out),
                 "--input-size", "64x64"]) == 0
    return out
