"""A read that blocks forever: a camera that sends part of a real stream, then nothing, never closing.

Over 20 such cycles the read must time out each time, the daemon's tick (status heartbeat) and
watchdog (WATCHDOG=1 on a real sd_notify socket) must keep going, and the daemon's threads and
open file descriptors, sampled at the same point of every cycle, must stay flat.
"""
from __future__ import annotations

import socket
import statistics
import threading
import time

import pytest

from edge.capture import MAX_STUCK_READERS
from faultkit import StallingCamera, daemon_args, mpegts_bytes, proc_counts, wait_for

pytestmark = pytest.mark.timeout(150)

CYCLES = 20
READ_TIMEOUT_S = 0.5


class NotifyListener:
    """A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), data.decode(errors="replace")))

    def times(self, prefix: str) -> list[float]:
        return [t for t, m in list(self.messages) if any(line.startswith(prefix) for line in m.splitlines())]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def max_gap(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:])), default=float("inf"))


def test_stalled_stream_times_out_and_leaks_nothing(student_onnx, endpoint, subscriber, make_video, edge_daemon,
                                                    tmp_path, figures):
    ts = mpegts_bytes(make_video("camera.mp4", 40, size=(96, 64)), tmp_path / "camera.ts")
    cam = StallingCamera(ts, len(ts) // 2)  # about 15 frames, then silence on an open connection
    notify = NotifyListener(str(tmp_path / "notify.sock"))
    samples: list[tuple[int, int, int]] = []
    try:
        sub = subscriber(endpoint)
        env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000",
               "CRACK_EDGE_SOURCE__READ_TIMEOUT_S": str(READ_TIMEOUT_S), "CRACK_EDGE_SOURCE__OPEN_TIMEOUT_S": "3"}
        d = edge_daemon(*daemon_args(student_onnx, endpoint, "--source", cam.uri), env=env)
        # Sampled as each new connection arrives: the same phase of every cycle.
        cam.on_accept = lambda n: samples.append((n, *proc_counts(d.pid)))
        t0 = time.monotonic()
        assert wait_for(lambda: cam.accepted > CYCLES or d.proc.poll() is not None, timeout=100), \
            f"only {cam.accepted} cycles; log:\n{d.log()[-3000:]}"
        elapsed = time.monotonic() - t0
        assert d.proc.poll() is None, d.log()[-3000:]
        # Once the camera is gone for good, only the reconnect attempts remain: counts settle.
        cam.close()
        usual = max(x[1] for x in samples[1:CYCLES // 2])

        def settled_counts() -> tuple[int, int] | None:
            counts = proc_counts(d.pid)
            return counts if counts[0] <= usual else None

        settled = wait_for(settled_counts, timeout=5)
        drained = []  # everything queued in the subscriber while the cycles ran
        while (msg := sub.recv(0.05)) is not None:
            drained.append(msg)
        statuses = sub.collect(3, timeout=5, kind="status")
    finally:
        cam.close()
        notify.close()
    assert len(statuses) == 3
    src = statuses[-1].header["source"]
    assert src["reconnects"] >= CYCLES and src["frames"] > CYCLES
    masks = [m for m in drained if m.kind == "mask"]
    assert len(masks) > CYCLES, "the frames of each cycle are still inferred and published"
    log = d.log()
    timeouts = log.count("read failed") + log.count("read blocked")
    assert timeouts >= CYCLES - 1, log[-3000:]
    # Tick and watchdog kept their pace through every stall.
    watchdog = [t for t in notify.times("WATCHDOG=1") if t >= t0]
    status_lines = [t for t in notify.times("STATUS=") if t >= t0]
    assert len(watchdog) >= elapsed / 1.0 * 0.8 and max_gap(watchdog) < 2.0, (len(watchdog), max_gap(watchdog))
    assert max_gap(status_lines) < 2.0
    # Flat: no growth from the first half of the cycles to the second.  A reader abandoned in its
    # read may outlive the next one's start by a moment (bounded by MAX_STUCK_READERS), so single
    # samples may peak; the typical count may not rise, and nothing may be left once reads end.
    first = [s for s in samples if 2 <= s[0] <= CYCLES // 2]
    second = [s for s in samples if s[0] > CYCLES // 2]
    for i, what in ((1, "threads"), (2, "fds")):
        base = max(s[i] for s in first)
        assert statistics.median(s[i] for s in second) <= statistics.median(s[i] for s in first), (what, samples)
        assert max(s[i] for s in samples[1:]) <= base + MAX_STUCK_READERS, (what, samples)
    assert settled is not None and settled[0] <= max(s[1] for s in first) and settled[1] <= max(s[2] for s in first), \
        (settled, samples)
    figures.record("blocked_read", cycles=cam.accepted - 1, read_timeout_s=READ_TIMEOUT_S,
                   seconds_per_cycle=round(elapsed / (cam.accepted - 1), 2), read_timeouts_logged=timeouts,
                   watchdog_pings=len(watchdog), watchdog_max_gap_s=round(max_gap(watchdog), 2),
                   status_max_gap_s=round(max_gap(status_lines), 2),
                   threads_first_last=[samples[1][1], samples[-1][1]], fds_first_last=[samples[1][2], samples[-1][2]],
                   threads_range=[min(s[1] for s in samples[1:]), max(s[1] for s in samples[1:])],
                   fds_range=[min(s[2] for s in samples[1:]), max(s[2] for s in samples[1:])],
                   threads_fds_settled=list(settled), stuck_readers_last=src["stuck_readers"],
                   masks_received=len(masks))
