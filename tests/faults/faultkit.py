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


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


def require_netns(prefix: str) -> None:
    """Skip (saying why) unless this process can create a network namespace."""
    import pytest

    if os.geteuid() != 0 or shutil.which("ip") is None:
        reason = "network namespaces need root and iproute2 (ip): skipped"
        print(reason)
        pytest.skip(reason)
    probe = f"{prefix}probe{os.getpid() % 100000}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        reason = f"cannot create a network namespace here: {r.stderr.strip()}"
        print(reason)
        pytest.skip(reason)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)


class NetnsPair:
    """Two network namespaces joined by a veth pair: the vehicle (``ns_d``, ``d_addr``) and the desk
    (``ns_v``, ``v_addr``), with CurveZMQ keys as on a real network: the daemon a server, one
    authorised viewer key.  ``spawn`` runs ``python -m MODULE`` in either; ``close`` stops them all
    and deletes the namespaces."""

    def __init__(self, root: Path, prefix: str, d_addr: str, v_addr: str) -> None:
        import zmq.auth

        tag = f"{os.getpid() % 100000}"
        self.root = root
        self.ns_d, self.ns_v = f"{prefix}d{tag}", f"{prefix}v{tag}"
        self.if_d, self.if_v = f"{prefix[0]}d{tag}", f"{prefix[0]}v{tag}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []
        self.made_ns: list[str] = []
        for ns in (self.ns_d, self.ns_v):
            sh("ip", "netns", "add", ns)
            self.made_ns.append(ns)
        sh("ip", "link", "add", self.if_d, "type", "veth", "peer", "name", self.if_v)
        for ns, dev, addr in ((self.ns_d, self.if_d, d_addr), (self.ns_v, self.if_v, v_addr)):
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        keys, authorized = root / "keys", root / "authorized"
        keys.mkdir()
        authorized.mkdir()
        zmq.auth.create_certificates(str(keys), "daemon")
        zmq.auth.create_certificates(str(keys), "viewer")
        for secret in keys.glob("*.key_secret"):
            secret.chmod(0o600)
        shutil.copy(keys / "viewer.key", authorized / "viewer.key")
        self.client = ["--server-key", str(keys / "daemon.key"), "--key", str(keys / "viewer.key_secret")]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CRACK_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(root / "cache")})
        self.env = env
        self.denv = {**env, "CRACK_EDGE_SECURITY__SECRET_KEY": str(keys / "daemon.key_secret"),
                     "CRACK_EDGE_SECURITY__AUTHORIZED_KEYS": str(authorized)}

    def spawn(self, ns: str, name: str, env: dict, module: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")
        self.logs.append(log)
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", module, *args],
                             cwd=Path(__file__).parents[2], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = p
        return p

    def close(self) -> None:
        for p in reversed(list(self.procs.values())):
            stop_process(p)
        for f in self.logs:
            f.close()
        for ns in self.made_ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
