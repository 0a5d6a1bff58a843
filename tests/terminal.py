"""A command run as from a terminal, with Ctrl-C pressed when its stderr shows a given line.

A module of its own (like media.py) so that the edge and trainer tests share it.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def run_at_terminal(module: str, *args: str, ctrl_c_when: Callable[[str], bool] | None = None,
                    timeout: float = 60) -> tuple[int, str, str]:
    """``python -m module args``; SIGINT once a stderr line satisfies ``ctrl_c_when``. (status, stdout, stderr)"""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            # a shell's background job would inherit SIGINT ignored; a terminal's does not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    err: list[str] = []
    pressed = False
    try:
        for line in proc.stderr:
            err.append(line)
            if ctrl_c_when is not None and not pressed and ctrl_c_when(line):
                proc.send_signal(signal.SIGINT)
                pressed = True
        proc.wait(timeout)
        reader.join(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(out), "".join(err)
