"""Headless output: the rendered images as numbered PNGs or one MP4, with a JSON line per image.

``frames.jsonl`` beside the images says what each one shows (vehicle, seq, figures), so a test
or a script can check the output frame by frame without reading pixels.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from viewer.state import VehicleView

log = logging.getLogger(__name__)


class OutputError(OSError):
    """The output folder cannot be used (it is a file, or not writable)."""


class HeadlessSink:
    """Images into ``out``.  Re-running into the same folder continues: PNG numbers go on after the
    highest already there and an MP4 gets a new name, so no line of ``frames.jsonl`` ever points at
    a picture that a later run replaced."""

    def __init__(self, out: Path, fmt: str = "png", fps: float = 10.0) -> None:
        self.out = Path(out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._meta = open(self.out / "frames.jsonl", "a", encoding="utf-8")
        except OSError as e:
            what = "is not a folder" if self.out.exists() and not self.out.is_dir() else "cannot be written"
            raise OutputError(f"--out {self.out} {what}: {e.strerror or e}") from None
        self.fmt = fmt
        self.fps = fps
        self.count = _last_index(self.out)
        self.written = 0
        self._video_name = _free_video_name(self.out)
        self._video: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, img: np.ndarray, views: Sequence[VehicleView], trigger: str, t_wall: float) -> None:
        self.count += 1
        self.written += 1
        name = f"frame-{self.count:06d}.png" if self.fmt == "png" else self._video_name
        if self.fmt == "png":
            if not cv2.imwrite(str(self.out / name), img):
                raise OSError(f"cannot write {self.out / name}")
        else:
            self._video_write(img)
        meta: dict[str, Any] = {"index": self.count, "file": name, "t": round(t_wall, 6), "trigger": trigger,
                                "vehicles": [_view_meta(v) for v in views]}
        self._meta.write(json.dumps(meta, separators=(",", ":"), allow_nan=False) + "\n")
        self._meta.flush()

    def _video_write(self, img: np.ndarray) -> None:
        if self._video is None:
            self._size = (img.shape[1] // 2 * 2, img.shape[0] // 2 * 2)  # codecs want even sizes
            path = str(self.out / self._video_name)
            self._video = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._video.isOpened():
                raise OSError(f"cannot open {path} for writing (no MP4 encoder in this OpenCV?)")
        if (img.shape[1], img.shape[0]) != self._size:
            img = _letterbox(img, self._size)
        self._video.write(img)

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None
        self._meta.close()
        log.info("event=headless_closed out=%s images=%d format=%s", self.out, self.written, self.fmt)


def _last_index(out: Path) -> int:
    """The highest picture number already in ``out`` (PNG names), 0 for an empty folder."""
    best = 0
    for p in out.glob("frame-*.png"):
        stem = p.stem[len("frame-"):]
        if stem.isdigit():
            best = max(best, int(stem))
    return best


def _free_video_name(out: Path) -> str:
    name, n = "viewer.mp4", 1
    while (out / name).exists():
        n += 1
        name = f"viewer-{n}.mp4"
    return name


def _letterbox(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    s = min(w / img.shape[1], h / img.shape[0])
    scaled = cv2.resize(img, (max(1, int(img.shape[1] * s)), max(1, int(img.shape[0] * s))))
    out = np.zeros((h, w, 3), np.uint8)
    out[:scaled.shape[0], :scaled.shape[1]] = scaled
    return out


def _view_meta(v: VehicleView) -> dict[str, Any]:
    return {
        "vehicle_id": v.vehicle_id, "run_id": v.run_id, "seq": v.seq, "masks": v.masks, "stale": v.stale,
        "drops": v.drops, "restarts": v.restarts, "crack_ratio": v.crack_ratio,
        "crack_length_px": v.crack_length_px, "crack_max_width_px": v.crack_max_width_px,
        "has_frame": v.frame_jpeg is not None, "fps": round(v.fps, 3),
        "latency_publish_ms": None if v.latency_publish_ms is None else round(v.latency_publish_ms, 3),
        "latency_capture_ms": None if v.latency_capture_ms is None else round(v.latency_capture_ms, 3),
    }
