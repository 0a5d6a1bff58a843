"""Tools the fault tests share: real misbehaving peers and the figures they measure.

* :class:`NetworkCamera`: ffmpeg serving a clip as MPEG-TS over TCP (a network camera that can
  be killed and restarted on the same port).
* :class:`StallingCamera`: a TCP server that sends the first bytes of a real MPEG-TS stream and
  then goes silent without closing (a camera whose stream freezes).
* :func:`proc_counts`: threads and open fds of a process, from /proc.
* :func:`log_times`: wall-clock times of log lines (the daemon's and viewer's asctime format).
* :class:`Figures`: what each test measured, appended to one JSON file (``CRACK_FAULT_FIGURES``
  or ``<pytest basetemp>/fault-figures.json``) and printed, so docs/reliability.md is filled from a run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
VEHICLE = "van-7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_args(model: Path, endpoint: str, *extra: str, size: str = "64x64") -> list[str]:
    return ["--model", str(model), "--backend", "onnxruntime", "--threads", "1", "--publish", endpoint,
            "--inference-size", size, "--vehicle-id", VEHICLE, *extra]


def proc_counts(pid: int) -> tuple[int, int]:
    """(threads, open fds) of a live process."""
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def wait_for(pred: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    """The first truthy ``pred()`` within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v or None
        time.sleep(step)


_ASCTIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def line_time(line: str) -> float:
    """Epoch time of a log line in the daemon's and viewer's format (asctime first), or -1."""
    m = _ASCTIME.match(line)
    if not m:
        return -1.0
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000


def log_times(path: Path, pattern: str) -> list[float]:
    """Epoch times of the log lines of ``path`` that contain ``pattern``."""
    lines = Path(path).read_text(errors="replace").splitlines()
    return [t for line in lines if pattern in line and (t := line_time(line)) >= 0]


def need_ffmpeg() -> str:
    import pytest

    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.skip("ffmpeg is not installed: it serves the network camera (CI installs it)")
    return exe


class NetworkCamera:
    """``ffmpeg -re -stream_loop -1 -i clip -c:v mpeg4 -f mpegts tcp://127.0.0.1:PORT?listen=1``."""

    def __init__(self, clip: Path, port: int, log: Path) -> None:
        self.args = [need_ffmpeg(), "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1",
                     "-i", str(clip), "-an",
                     # Encoded, not copied: a copy with -stream_loop breaks at the loop point
                     # (the header bitstream filter it needs stops at the first EOF).
                     "-c:v", "mpeg4", "-q:v", "5", "-g", "10", "-bf", "0",
                     "-f", "mpegts", f"tcp://127.0.0.1:{port}?listen=1"]
        self.port = port
        self.log = open(log, "ab")
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.kill()
        self.log.close()


def mpegts_bytes(clip: Path, out: Path) -> bytes:
    """The clip remuxed to MPEG-TS (what a network camera sends), as bytes."""
    subprocess.run([need_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(clip), "-an", "-c", "copy",
                    "-bsf:v", "dump_extra", "-f", "mpegts", str(out)], check=True, timeout=60)
    return out.read_bytes()


class StallingCamera:
    """Accepts connections, sends ``head`` bytes of a real stream, then nothing, never closing.

    Every accepted connection is kept open until :meth:`close` (a frozen camera does not hang
    up), so the daemon's read can only end by its own timeout.  ``accepted`` counts them.
    """

    def __init__(self, payload: bytes, head: int) -> None:
        self.payload = payload[:head]
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.accept_times: list[float] = []
        self.on_accept: Callable[[int], None] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stalling-camera", daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        return len(self.accept_times)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except (socket.timeout, OSError):
                continue
            self.conns.append(conn)
            self.accept_times.append(time.time())
            if self.on_accept is not None:
                self.on_accept(len(self.accept_times))
            try:
                conn.sendall(self.payload)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for c in self.conns:
            c.close()
        self.server.close()


class Figures:
    """Measured figures per case, merged into one JSON file and printed (visible with ``-s``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, case: str, **figures: Any) -> None:
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        data[case] = {**figures, "recorded": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        print(f"\nFIGURES {case} {json.dumps(figures, sort_keys=True)}")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def python_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def write_clip(path: Path, n: int, size: tuple[int, int] = (96, 64), fps: float = 10.0) -> Path:
    """A small real mp4 for fixtures wider than one test (tests/media.py, at 10 fps by default)."""
    from media import write_video

    return write_video(path, n, size, fps)


def tcp_send_queue(local_port: int) -> int:
    """Bytes waiting in the kernel's send queues of the TCP connections from ``local_port``."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == local_port and f[3] == "01":  # ESTABLISHED
                total += int(f[4].split(":")[0], 16)
    return total
