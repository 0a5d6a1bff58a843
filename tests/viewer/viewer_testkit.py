"""Helpers for the viewer's tests, importable by name (conftest.py holds the fixtures).

Messages are built with ``edge.wire``'s own encoders; the publisher is an XPUB so a test can
wait for the viewer's subscription instead of sleeping; every wait has a deadline.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from edge import wire

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
RECV_TIMEOUT_MS = 5000

# How many hypothesis cases each fuzz test ran; printed in the terminal summary.
FUZZ_COUNTS: dict[str, int] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


# ------------------------------------------------------------ messages


def sample_mask(w: int, h: int, seed: int) -> np.ndarray:
    """A diagonal crack whose position depends on ``seed``, so frames differ one from another."""
    import cv2

    mask = np.zeros((h, w), np.uint8)
    off = (seed * 7) % max(1, w // 2)
    cv2.line(mask, (off, 0), (min(w - 1, off + w // 2), h - 1), 255, 3)
    return mask


def sample_frame(w: int, h: int, seed: int) -> np.ndarray:
    """A grey road-like frame with a mild gradient (JPEG keeps it close)."""
    y = np.linspace(90, 150, h, dtype=np.float32)[:, None]
    img = np.repeat((y + seed % 5)[:, :, None], 3, axis=2) * np.ones((1, w, 1), np.float32)
    return img.astype(np.uint8)


@dataclass
class Messages:
    vehicle_id: str = "truck-7"
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    width: int = 64
    height: int = 48
    seq: int = 0

    def mask(self, seq: int | None = None, with_frame: bool = True, **over: Any) -> list[bytes]:
        if seq is None:
            seq = self.seq
            self.seq += 1
        m = sample_mask(self.width, self.height, seq)
        now = time.time()
        header = {
            "vehicle_id": self.vehicle_id, "run_id": self.run_id, "seq": seq, "frame_index": seq,
            "t_capture": now - 0.02, "t_publish": now, "infer_ms": 5.0, "model_sha256": "ab" * 32,
            "width": self.width, "height": self.height, "crack_ratio": float((m > 0).mean()),
            "crack_count": 1, "crack_length_px": float(self.height), "crack_max_width_px": 3.0,
        }
        header.update(over)
        frame = wire.jpeg_b64(sample_frame(self.width, self.height, seq)) if with_frame else None
        return wire.encode_mask(header, wire.png_b64(m), frame)

    def status(self, seq: int | None = None, **over: Any) -> list[bytes]:
        if seq is None:
            seq = self.seq
            self.seq += 1
        header = {
            "vehicle_id": self.vehicle_id, "run_id": self.run_id, "seq": seq, "t_publish": time.time(),
            "fps": 10.0, "drops": {"capture": 0}, "source": {"state": "ok"}, "backend": "onnxruntime",
            "model_sha256": "ab" * 32, "width": self.width, "height": self.height,
        }
        header.update(over)
        return wire.encode_status(header)


# ------------------------------------------------------------ a test publisher


class Publisher:
    """An XPUB on a random loopback port standing in for the daemon."""

    def __init__(self, ctx: zmq.Context, ep: str | None = None) -> None:
        self.ctx = ctx
        self.endpoint = ep or endpoint()
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.SNDHWM, 10000)
        self.sock.bind(self.endpoint)

    def wait_subscriber(self, timeout_s: float = 10.0) -> bytes:
        """Block (bounded) until a subscription arrives; returns it."""
        if not self.sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no subscriber on {self.endpoint} within {timeout_s}s")
        return self.sock.recv()

    def wait_new_subscription(self, timeout_s: float = 15.0) -> None:
        """Until a *new* subscription (b"\\x01..."): an XPUB also reports the lost pipe's unsubscribe."""
        deadline = time.monotonic() + timeout_s
        while not self.wait_subscriber(max(0.1, deadline - time.monotonic())).startswith(b"\x01"):
            pass

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def close(self) -> None:
        self.sock.close(linger=1000)


def recv_bounded(sock: zmq.Socket, timeout_ms: int = RECV_TIMEOUT_MS) -> list[bytes]:
    if not sock.poll(timeout_ms):
        raise TimeoutError(f"nothing received within {timeout_ms} ms")
    return sock.recv_multipart()


class Proc:
    """``crack-viewer ARGS`` in a subprocess; stderr is read as it comes so a test can wait for a line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
                 module: str = "viewer.cli") -> None:
        self.args = args
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.p = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=full_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._out: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._out_reader = threading.Thread(target=lambda: self._out.extend(self.p.stdout or []), daemon=True)
        self._out_reader.start()

    @property
    def out(self) -> str:
        return "".join(self._out)

    def _read(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()

    @property
    def err(self) -> str:
        with self._cond:
            return "".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = 15.0, start: int = 0) -> int:
        """Wait (bounded) for a stderr line matching ``pattern``; returns its index."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self._lines):
                    if rx.search(self._lines[i]):
                        return i
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} within {timeout}s; stderr:\n{''.join(self._lines)[-3000:]}")
                self._cond.wait(min(left, 0.1))

    def wait(self, timeout: float = 30.0) -> int:
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            self._reader.join(5)
            raise AssertionError(f"crack-viewer {' '.join(self.args)} did not finish in {timeout}s:\n{self.err[-3000:]}")
        self._reader.join(5)
        self._out_reader.join(5)
        return self.p.returncode

    def stop(self, timeout: float = 10.0) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        return self.wait(timeout)


def run_cli(*args: str, timeout: float = 30.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "viewer.cli", *[str(a) for a in args]], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
