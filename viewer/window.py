"""The OpenCV window: show an image, poll the keyboard (q/Esc quit, p/space pause, s snapshot)."""
from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

KEYS = {ord("q"): "quit", 27: "quit", ord("p"): "pause", ord(" "): "pause", ord("s"): "snapshot"}


class NoDisplay(RuntimeError):
    """There is no screen to open a window on."""


def check_display() -> None:
    """Refuse early, with a hint, where Qt would abort the process for want of a display."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                                 or os.environ.get("QT_QPA_PLATFORM")):
        raise NoDisplay("no display (DISPLAY is not set): use --headless --out DIR, or run under a desktop/Xvfb")
    display = os.environ.get("DISPLAY")
    if sys.platform.startswith("linux") and display and not os.environ.get("WAYLAND_DISPLAY") \
            and not os.environ.get("QT_QPA_PLATFORM") and not x_server_answers(display):
        # Qt would abort the whole process (134) on this; say it and exit NO_DISPLAY instead.
        raise NoDisplay(f"DISPLAY={display} is set but no X server answers there: use --headless --out DIR")


def x_server_answers(display: str, timeout_s: float = 2.0) -> bool:
    """Whether an X server accepts a connection at ``display`` (``[host]:N[.S]``); no X library needed."""
    m = re.fullmatch(r"(?P<host>[^:]*):(?P<num>\d+)(?:\.\d+)?", display)
    if m is None:
        return True  # a form we do not know (e.g. a launchd path): let the toolkit decide
    host, num = m["host"], int(m["num"])
    if host in ("", "unix"):
        targets = [(socket.AF_UNIX, f"/tmp/.X11-unix/X{num}"), (socket.AF_UNIX, f"\0/tmp/.X11-unix/X{num}")]
    else:
        targets = [(socket.AF_INET, (host, 6000 + num))]
    for family, addr in targets:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(timeout_s)
                s.connect(addr)
                return True
        except OSError:
            continue
    return False


class Window:
    """A resizable window without toolbars; ``poll()`` returns an action name or None."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._size: tuple[int, int] | None = None
        cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        cv2.moveWindow(title, 0, 0)
        self._shown = False

    def show(self, img: np.ndarray) -> None:
        size = (img.shape[1], img.shape[0])
        if size != self._size:  # the layout changed (a vehicle joined): fit the window to it
            cv2.resizeWindow(self.title, *size)
            self._size = size
        cv2.imshow(self.title, img)
        self._shown = True

    def poll(self) -> str | None:
        key = cv2.waitKey(1)
        if key != -1:
            return KEYS.get(key & 0xFF)
        # Closing the window with the mouse is a quit, like `q`.
        if self._shown and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            return "quit"
        return None

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass


def save_snapshot(img: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"crack-viewer-{stamp}-{int(time.time() * 1000) % 1000:03d}.png"
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write snapshot {path}")
    log.info("event=snapshot path=%s", path)
    return path
