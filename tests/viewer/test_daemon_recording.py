"""The committed recording of the real daemon, replayed into the viewer and checked frame by frame;
record -> replay -> record; and the live daemon straight into the headless viewer."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge import wire
from edge.recording import read_records
from viewer import render
from viewer_testkit import DATA, REPO, endpoint

RECORDING = DATA / "daemon-recording"


def _recorded() -> list[wire.Message]:
    return [wire.decode(r.frames) for r in read_records(RECORDING)]


def _reddish(px: np.ndarray) -> np.ndarray:
    b, g, r = (px[..., i].astype(int) for i in range(3))
    return (r - g > 50) & (r - b > 50)


def test_committed_recording_is_the_daemons() -> None:
    msgs = _recorded()
    masks = [m for m in msgs if m.kind == "mask"]
    assert len(masks) == 20 and len(msgs) - len(masks) >= 1
    assert [m.header["seq"] for m in masks] == list(range(20))
    assert {m.vehicle_id for m in msgs} == {"demo-van"} and all(m.frame_jpeg for m in masks)
    assert RECORDING.joinpath("rec-000000.crec").stat().st_size < 200_000


def test_replay_into_headless_viewer_frame_by_frame(cli, tmp_path: Path) -> None:
    ep, out = endpoint(), tmp_path / "out"
    viewer = cli("watch", "--connect", ep, "--headless", "--out", out, "--count", 20, "--tile-width", 640)
    replay = cli("replay", RECORDING, "--bind", ep, "--speed", 4, "--wait-subscriber", 15)
    assert replay.wait(60) == 0, replay.err
    assert viewer.wait(30) == 0, viewer.err
    masks = [m for m in _recorded() if m.kind == "mask"]
    meta = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    pngs = sorted(out.glob("frame-*.png"))
    assert len(pngs) == len(meta) == 20
    for msg, entry, png in zip(masks, meta, pngs):
        (v,) = entry["vehicles"]
        h = msg.header
        assert (v["vehicle_id"], v["run_id"], v["seq"]) == (h["vehicle_id"], h["run_id"], h["seq"])
        assert v["crack_ratio"] == h["crack_ratio"] and v["crack_length_px"] == h["crack_length_px"]
        assert v["drops"] == 0 and v["restarts"] == 0 and not v["stale"] and v["has_frame"]
        assert v["latency_capture_ms"] > v["latency_publish_ms"] > 0
        img = cv2.imread(str(png))
        scale = 640 / h["width"]
        pic = img[render.BAND_H:render.BAND_H + round(h["height"] * scale)]
        # Sample the centre of every mask pixel: crack pixels carry the overlay, the others do not.
        ys, xs = np.mgrid[0:h["height"], 0:h["width"]]
        cy = ((ys + 0.5) * scale).astype(int)
        cx = ((xs + 0.5) * scale).astype(int)
        red = _reddish(pic[cy, cx])
        crack = msg.mask > 0
        lonely = ~cv2.dilate(crack.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert red[crack].mean() > 0.95, png
        assert red[lonely].mean() < 0.02, png
        # Elsewhere the picture is the camera frame the daemon sent.
        frame = cv2.resize(msg.frame(), (640, pic.shape[0]), interpolation=cv2.INTER_LINEAR)
        diff = np.abs(pic.astype(int) - frame.astype(int)).max(axis=2)
        far = cv2.resize(lonely.astype(np.uint8), (640, pic.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
        assert np.median(diff[far]) <= 2
        # The text band: dark, with white text.
        band = img[:render.BAND_H]
        assert (band == render.BAND_BGR).all(axis=2).mean() > 0.6 and (band.min(axis=2) > 200).sum() > 300


def test_record_replay_record_of_the_daemon_recording(cli, tmp_path: Path) -> None:
    ep, again = endpoint(), tmp_path / "again"
    recorder = cli("record", "--connect", ep, "--out", again, "--count", 22)
    replay = cli("replay", RECORDING, "--bind", ep, "--speed", 4, "--wait-subscriber", 15)
    assert replay.wait(60) == 0, replay.err
    assert recorder.wait(30) == 0, recorder.err
    a, b = list(read_records(RECORDING)), list(read_records(again))
    assert [r.frames for r in a] == [r.frames for r in b]


def test_live_daemon_into_headless_viewer(cli, student_onnx: Path, tmp_path: Path) -> None:
    """The daemon as it is today (not only the recorded one) is understood by the viewer."""
    if not (REPO / "edge" / "daemon.py").exists():
        pytest.skip("the daemon (edge/daemon.py) is not there yet")
    ep, out = endpoint(), tmp_path / "out"
    viewer = cli("watch", "--connect", ep, "--headless", "--out", out, "--count", 6, "--tile-width", 320)
    daemon = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", "--source", str(REPO / "edge" / "demo" / "crackforest.mp4"),
         "--model", str(student_onnx), "--publish", ep, "--max-frames", "6", "--inference-size", "64x64",
         "--mode", "every", "--no-loop", "--vehicle-id", "live-van", "--wait-subscriber", "20"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert daemon.returncode == 0, daemon.stderr[-3000:]
    assert viewer.wait(30) == 0, viewer.err
    meta = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [e["vehicles"][0]["seq"] for e in meta] == list(range(6))
    assert all(e["vehicles"][0]["vehicle_id"] == "live-van" for e in meta)
    assert "rejected=0" in viewer.err
