"""The real OpenCV window under Xvfb: a screenshot (ffmpeg x11grab) shows the overlay; keys work.

Skipped, with the reason printed, where Xvfb, ffmpeg or xdotool are absent (.ci/run installs them).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from viewer import render
from viewer_testkit import DATA, endpoint

RECORDING = DATA / "daemon-recording"


def _screenshot(display: str, path: Path) -> np.ndarray:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (needed for x11grab screenshots)")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "x11grab", "-video_size", "1280x1024", "-i", display,
                    "-frames:v", "1", str(path)], check=True, timeout=30, capture_output=True)
    img = cv2.imread(str(path))
    assert img is not None, path
    return img


def _overlay_shown(img: np.ndarray) -> bool:
    pic = img[render.BAND_H:render.BAND_H + 420, :640].astype(int)
    red = (pic[..., 2] - pic[..., 1] > 50) & (pic[..., 2] - pic[..., 0] > 50)
    band = img[:render.BAND_H, :640]
    return red.sum() > 500 and (band == render.BAND_BGR).all(axis=2).mean() > 0.6


def _watch_a_replay(cli, display: str, tmp_path: Path, *extra: str):
    ep = endpoint()
    replay = cli("replay", RECORDING, "--bind", ep, "--loop", "--speed", 2, "--wait-subscriber", 30)
    viewer = cli("watch", "--connect", ep, "--snapshot-dir", tmp_path / "snaps", "--duration", 60, *extra,
                 env={"DISPLAY": display, "QT_QPA_PLATFORM": "xcb"})
    viewer.wait_for(r"event=window_painted vehicles=1", timeout=30)
    return replay, viewer


def test_window_screenshot_shows_mask_and_text(cli, xvfb: str, tmp_path: Path) -> None:
    replay, viewer = _watch_a_replay(cli, xvfb, tmp_path)
    shot = tmp_path / "window.png"
    deadline = time.monotonic() + 15
    img = _screenshot(xvfb, shot)
    while not _overlay_shown(img) and time.monotonic() < deadline:
        time.sleep(0.3)
        img = _screenshot(xvfb, shot)
    assert _overlay_shown(img), f"no overlay in the screenshot {shot}; viewer log:\n{viewer.err[-2000:]}"
    band = img[:render.BAND_H, :640]
    assert (band.min(axis=2) > 200).sum() > 300  # white text in the band
    bottom = render.BAND_H + 427 + render.FOOTER_H   # the recording's 480x320 frames shown 640 wide
    footer = img[bottom - render.FOOTER_H:bottom, :640]
    assert (footer == render.FOOTER_BGR).all(axis=2).mean() > 0.6
    if os.environ.get("VIEWER_TEST_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["VIEWER_TEST_KEEP_SCREENSHOT"])
    assert viewer.stop(15) == 0, viewer.err
    assert replay.stop(10) == 0, replay.err


def test_window_keys_snapshot_pause_quit(cli, xvfb: str, tmp_path: Path) -> None:
    xdotool = shutil.which("xdotool")
    if xdotool is None:
        pytest.skip("xdotool is not installed (needed to press keys in the window)")
    replay, viewer = _watch_a_replay(cli, xvfb, tmp_path, "--title", "keys-test")
    env = {**os.environ, "DISPLAY": xvfb}
    wid = subprocess.run([xdotool, "search", "--sync", "--name", "keys-test"], env=env, capture_output=True,
                         text=True, timeout=15).stdout.split()[0]
    subprocess.run([xdotool, "windowfocus", "--sync", wid], env=env, check=True, timeout=15)

    def press(key: str) -> None:
        subprocess.run([xdotool, "key", key], env=env, check=True, timeout=15)

    press("s")
    i = viewer.wait_for(r"event=snapshot path=", timeout=10)
    snap = Path(viewer.err.splitlines()[i].split("path=")[1].strip())
    assert snap.parent == tmp_path / "snaps" and _overlay_shown(cv2.imread(str(snap)))
    press("p")
    i = viewer.wait_for(r"event=paused", start=i)
    press("space")
    viewer.wait_for(r"event=resumed", start=i)
    press("q")
    assert viewer.wait(15) == 0, viewer.err
    assert replay.stop(10) == 0, replay.err
