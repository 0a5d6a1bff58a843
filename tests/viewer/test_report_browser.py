"""The report page in a real headless Chromium: no JS errors, the track drawn, one line per segment."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.viewer.test_report import report  # noqa: F401  (the shared synthetic report)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_page_loads_without_errors_and_holds_every_segment(report, tmp_path):  # noqa: F811
    out, _ = report
    url = (out / "index.html").as_uri()
    r = _chromium(tmp_path, "--dump-dom", url)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not re.search(r"Uncaught|CONSOLE.*Error", r.stderr), r.stderr[-2000:]
    gj = json.loads((out / "report.geojson").read_text())
    n = sum(1 for f in gj["features"] if f["properties"]["kind"] == "segment")
    assert r.stdout.count('class="segment"') == n          # drawn by the page's script
    assert r.stdout.count("<tr class=\"seg\">") == n


def test_screenshot_shows_the_track(report, tmp_path):  # noqa: F811
    import cv2

    out, _ = report
    shot = tmp_path / "shot.png"
    r = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,700", (out / "index.html").as_uri())
    assert shot.exists(), r.stderr[-2000:]
    img = cv2.imread(str(shot))
    track = np.array([0x9e, 0x4e, 0x1f])                     # TRACK colour #1f4e9e in BGR
    hits = int(np.all(np.abs(img.astype(int) - track) <= 8, axis=2).sum())
    assert hits > 500, f"{hits} track-coloured pixels"
