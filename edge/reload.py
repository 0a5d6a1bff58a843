"""``crack-edge reload --pid PID``: SIGHUP the daemon and wait for its answer, so that
``systemctl reload`` (ExecReload=) fails when the daemon refused the reload.

The daemon writes its answer to ``reload-PID.json`` in $RUNTIME_DIRECTORY (systemd's
RuntimeDirectory=), else the temporary folder: a counter, ok and a message.  Works with the
systemd of every Jetson release (Type=notify-reload needs systemd 253).
"""
from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

from common import exits


def answer_path(pid: int) -> Path:
    base = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or tempfile.gettempdir()
    return Path(base) / f"crack-edge-reload-{pid}.json"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_answer(ok: bool, message: str) -> None:
    """The daemon's side: the answer to the latest SIGHUP (atomic; never raises)."""
    path = answer_path(os.getpid())
    n = int(_read(path).get("n", 0)) + 1
    try:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"n": n, "ok": ok, "message": message}))
        os.replace(tmp, path)
    except OSError:
        pass


def request(pid: int, timeout_s: float = 10.0) -> tuple[int, str]:
    """SIGHUP ``pid``, wait for a new answer; (exit status, message)."""
    path = answer_path(pid)
    before = int(_read(path).get("n", 0))
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        return exits.UNAVAILABLE, f"--pid {pid}: {e.strerror}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = _read(path)
        if int(got.get("n", 0)) > before:
            return (exits.OK if got.get("ok") else exits.CONFIG), str(got.get("message", ""))
        time.sleep(0.05)
    return exits.UNAVAILABLE, f"no answer from pid {pid} within {timeout_s:g}s"
