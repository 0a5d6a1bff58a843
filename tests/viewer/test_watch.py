"""`crack-viewer watch --headless` against real sockets: output per frame, bad input, stale/resume, tiles."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from viewer_testkit import REPO, Messages, endpoint


def _frames_meta(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def test_headless_one_png_per_mask_and_bad_input_is_counted_and_skipped(cli, pub, tmp_path: Path) -> None:
    out = tmp_path / "out"
    viewer = cli("watch", "--connect", pub.endpoint, "--headless", "--out", out, "--count", 5, "--tile-width", 320)
    pub.wait_subscriber()
    m = Messages(vehicle_id="truck-7")
    good = m.mask(0)
    bad = {
        "frame_count": good[:2],
        "bad_json": [good[0], b"{not json", good[2], good[3]],
        "bad_base64": [good[0], good[1], b"@@@not base64@@@", good[3]],
        "bad_png": [good[0], good[1], base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), good[3]],
        "unknown_schema": [good[0], good[1].replace(b'"schema":1', b'"schema":99'), good[2], good[3]],
        # The encoder refuses to build it (edge/headers.py), so the bytes are edited.
        "absurd_size": [good[0], good[1].replace(b'"width":64', b'"width":100000'), good[2], good[3]],
        "bad_topic": [b"\xff\xfe", good[1]],
    }
    pub.send(good)
    for frames in bad.values():
        pub.send(frames)
    pub.send(m.status(0))
    pub.send(m.mask(2))
    # A frame that is not a JPEG: counted, and the mask is shown alone.
    not_jpeg = m.mask(3)
    pub.send([*not_jpeg[:3], base64.b64encode(b"definitely not a jpeg")])
    pub.send(m.mask(4, with_frame=False))
    pub.send(m.mask(5))
    assert viewer.wait(30) == 0, viewer.err
    pngs = sorted(out.glob("frame-*.png"))
    meta = _frames_meta(out)
    assert len(pngs) == 5 == len(meta)
    assert [e["vehicles"][0]["seq"] for e in meta] == [0, 2, 3, 4, 5]
    assert [e["vehicles"][0]["has_frame"] for e in meta] == [True, True, False, False, True]
    # seq 1 was absurd (skipped): the state counts it lost on the way, as the daemon's seq says.
    assert meta[-1]["vehicles"][0]["drops"] == 1
    for reason in [*bad, "bad_jpeg"]:
        lines = re.findall(rf"event=bad_message reason={reason} count=1\b", viewer.err)
        assert len(lines) == 1, (reason, viewer.err)
    assert "rejected=8" in viewer.err
    img = cv2.imread(str(pngs[0]))
    assert img.shape[1] == 320


def test_stale_then_resumes_when_the_daemon_returns(cli, make_pub, tmp_path: Path) -> None:
    ep = endpoint()
    viewer = cli("watch", "--connect", ep, "--headless", "--out", tmp_path / "o", "--stale-after", "0.6",
                 "--log-level", "INFO")
    first = make_pub(ep)
    first.wait_subscriber()
    m1 = Messages(vehicle_id="v9")
    for _ in range(3):
        first.send(m1.mask())
    viewer.wait_for(r"event=vehicle_new vehicle=v9")
    first.close()  # the daemon goes away ...
    i = viewer.wait_for(r"event=vehicle_stale vehicle=v9", timeout=10)
    second = make_pub(ep)  # ... and comes back on the same endpoint, as a new run
    second.wait_subscriber(timeout_s=15)  # the viewer reconnected by itself
    m2 = Messages(vehicle_id="v9")
    second.send(m2.mask())
    viewer.wait_for(r"event=vehicle_resumed vehicle=v9", start=i)
    viewer.wait_for(r"event=vehicle_restarted vehicle=v9", start=i)
    assert viewer.stop() == 0
    assert re.search(r"event=vehicle_stats vehicle=v9 .*masks=4 .*restarts=1 stale=False stale_events=1", viewer.err), viewer.err
    meta = _frames_meta(tmp_path / "o")
    assert [e["vehicles"][0]["run_id"] for e in meta] == [m1.run_id] * 3 + [m2.run_id]


def test_many_vehicles_are_tiled_from_many_endpoints(cli, make_pub, tmp_path: Path) -> None:
    pubs = [make_pub(), make_pub(), make_pub()]
    out = tmp_path / "o"
    viewer = cli("watch", *[a for p in pubs for a in ("--connect", p.endpoint)], "--headless", "--out", out,
                 "--count", 6, "--tile-width", 200, "--columns", 3, "--event-loop", "asyncio")
    for p in pubs:
        p.wait_subscriber()
    ms = [Messages(vehicle_id=f"veh-{i}") for i in range(3)]
    for _ in range(2):
        for p, m in zip(pubs, ms):
            p.send(m.mask())
    assert viewer.wait(30) == 0, viewer.err
    last = sorted(out.glob("frame-*.png"))[-1]
    img = cv2.imread(str(last))
    assert img.shape[1] == 3 * 200 + 2 * 4
    meta = _frames_meta(out)
    assert [v["vehicle_id"] for v in meta[-1]["vehicles"]] == ["veh-0", "veh-1", "veh-2"]
    assert all(v["masks"] == 2 for v in meta[-1]["vehicles"])


def test_headless_mp4(cli, pub, tmp_path: Path) -> None:
    out = tmp_path / "o"
    viewer = cli("watch", "--connect", pub.endpoint, "--headless", "--out", out, "--format", "mp4", "--count", 5,
                 "--tile-width", 320)
    pub.wait_subscriber()
    m = Messages()
    for _ in range(5):
        pub.send(m.mask())
    assert viewer.wait(30) == 0, viewer.err
    cap = cv2.VideoCapture(str(out / "viewer.mp4"))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == 5
    assert frames[0].shape[1] == 320
    b, g, r = (frames[-1][..., i].astype(int) for i in range(3))
    assert ((r - g > 60) & (r - b > 60)).sum() > 100  # the mask overlay survived the codec
    assert np.mean([f.mean() for f in frames]) > 20


def test_window_without_a_display_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    r = subprocess.run([sys.executable, "-m", "viewer.cli", "watch", "--connect", endpoint()], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 71 and "use --headless --out DIR" in r.stderr, r.stderr
