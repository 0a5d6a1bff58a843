"""`crack-viewer bench`: how many messages per second the decode step handles on one core.

A benchmark, not a test: it prints figures and passes no judgement.  Messages are built with
the daemon's own encoder (``edge.wire``) at road-camera sizes.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np

from edge import wire


def _pin_one_core() -> str:
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return str(cpu)
    except (AttributeError, OSError):
        return "unpinned"


def sample_mask(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A 0/255 mask with a few thin, wandering cracks: sparse, like a road."""
    import cv2

    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(4):
        pts = np.cumsum(rng.integers(-12, 13, size=(30, 2)), axis=0) + [width // 2, height // 2]
        cv2.polylines(mask, [pts.astype(np.int32)], False, 255, int(rng.integers(1, 5)))
    return mask


def sample_message(width: int, height: int, with_frame: bool, seq: int = 0) -> list[bytes]:
    mask = sample_mask(width, height, seq)
    ratio = float((mask > 0).mean())
    header = {
        "vehicle_id": "bench", "run_id": "b" * 32, "seq": seq, "frame_index": seq,
        "t_capture": time.time(), "t_publish": time.time(), "infer_ms": 10.0, "model_sha256": "0" * 64,
        "width": width, "height": height, "crack_ratio": ratio, "crack_count": 4,
        "crack_length_px": 400.0, "crack_max_width_px": 4.0,
    }
    frame = None
    if with_frame:
        # Road-like: a smooth gradient with mild grain (pure noise would make an unrealistic JPEG).
        rng = np.random.default_rng(seq)
        base = np.linspace(90, 160, width, dtype=np.float32)[None, :, None] + np.zeros((height, 1, 3), np.float32)
        img = np.clip(base + rng.normal(0, 6, size=(height, width, 3)), 0, 255).astype(np.uint8)
        frame = wire.jpeg_b64(img)
    return wire.encode_mask(header, wire.png_b64(mask), frame)


def _rate(fn: Callable[[], object], seconds: float) -> tuple[float, int]:
    n, start = 0, time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(20):
            fn()
        n += 20
        now = time.perf_counter()
        if now >= end:
            return n / (now - start), n


def run_bench(seconds: float = 2.0) -> list[dict[str, object]]:
    import cv2

    cv2.setNumThreads(1)
    cpu = _pin_one_core()
    status = wire.encode_status({
        "vehicle_id": "bench", "run_id": "b" * 32, "seq": 1, "t_publish": time.time(), "fps": 10.0,
        "drops": {"capture": 0}, "source": {"state": "ok"}, "backend": "onnxruntime", "model_sha256": "0" * 64,
        "width": 448, "height": 448})
    cases: list[tuple[str, list[bytes], bool]] = [
        ("status", status, True),
        ("mask 448x448 header only", sample_message(448, 448, False), False),
        ("mask 448x448", sample_message(448, 448, False), True),
        ("mask 448x448 + frame jpeg", sample_message(448, 448, True), True),
        ("mask 1280x720 + frame jpeg", sample_message(1280, 720, True), True),
    ]
    out = []
    for name, frames, full in cases:
        rate, n = _rate(lambda: wire.decode(frames, decode_mask=full), seconds)
        out.append({"case": name, "msgs_per_s": round(rate), "n": n, "bytes": sum(len(f) for f in frames), "cpu": cpu})
    # What `watch` does per message: decode, count, update the vehicle's state.
    from viewer.state import FleetState
    from viewer.subscriber import Decoder

    frames = cases[3][1]
    dec, state = Decoder(), FleetState()

    def receive() -> None:
        msg = dec(frames)
        assert msg is not None
        state.vehicles.pop("bench", None)  # same seq each time: keep it from counting as restarts
        state.on_message(msg, time.time(), time.monotonic())

    rate, n = _rate(receive, seconds)
    out.append({"case": "watch receive path (448x448 + frame)", "msgs_per_s": round(rate), "n": n,
                "bytes": sum(len(f) for f in frames), "cpu": cpu})
    return out


def main(seconds: float = 2.0) -> int:
    for row in run_bench(seconds):
        print(" ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in row.items()), flush=True)
    return 0
