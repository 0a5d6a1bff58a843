"""A network camera that dies and returns: ffmpeg serving MPEG-TS over TCP, killed and restarted.

The daemon runs with its default source settings; the status heartbeat must report the source
down, and masks must resume within 10 s of the camera's return in the same process, with the
same run_id and ``seq`` continuing where it stopped.
"""
from __future__ import annotations

import time

import pytest

from edge.config import SourceConfig
from faultkit import NetworkCamera, daemon_args, free_port

pytestmark = pytest.mark.timeout(90)

OUTAGE_S = 8.0    # long enough for the reconnect backoff to double four times
RESUME_LIMIT_S = 10.0


def test_camera_killed_and_restarted(student_onnx, endpoint, subscriber, make_video, edge_daemon, tmp_path, figures):
    clip = make_video("camera.mp4", 40, size=(96, 64), fps=20.0)
    cam = NetworkCamera(clip, free_port(), tmp_path / "camera.log")
    cam.start()
    try:
        sub = subscriber(endpoint)
        d = edge_daemon(*daemon_args(student_onnx, endpoint, "--source", cam.uri, "--wait-subscriber", "15"))
        before = sub.collect(10, timeout=40)
        assert len(before) == 10, d.log()
        run_id = before[0].header["run_id"]
        seen: list = []  # every message from here on: none may be missed when checking seq
        status = sub.until(lambda m: seen.append(m) or (m.kind == "status" and m.header["source"]["state"] == "ok"),
                           timeout=5)
        assert status is not None and status.header["source"]["mode"] == "latest", "a live source defaults to latest"

        t_kill = time.time()
        cam.kill()
        down = sub.until(lambda m: seen.append(m) or (m.kind == "status" and m.header["t_publish"] > t_kill
                                                       and m.header["source"]["state"] in ("retrying", "connecting")
                                                       and m.header["source"]["last_error"]), timeout=5)
        assert down is not None, f"no status reported the camera down; daemon log:\n{d.log()[-3000:]}"
        t_reported = down.header["t_publish"] - t_kill
        time.sleep(max(0.0, t_kill + OUTAGE_S - time.time()))

        t_back = time.time()
        cam.start()
        after = []
        while not after or after[-1].header["t_capture"] < t_back:
            msg = sub.until(lambda m: seen.append(m) or m.kind == "mask", timeout=t_back + RESUME_LIMIT_S + 2 - time.time())
            assert msg is not None, f"no mask within {RESUME_LIMIT_S} s of the camera's return:\n{d.log()[-3000:]}"
            after.append(msg)
        resumed = after[-1]
        t_resume = resumed.header["t_publish"] - t_back
        masks = before + [m for m in seen if m.kind == "mask"]
        seqs = [m.header["seq"] for m in masks]
        assert d.proc.poll() is None, "the daemon must survive the outage"
        assert {m.header["run_id"] for m in masks} == {run_id}, "the daemon restarted"
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seq did not continue: {seqs}"
        assert t_resume <= RESUME_LIMIT_S
        final = sub.until(lambda m: m.kind == "status" and m.header["source"]["state"] == "ok", timeout=5)
        assert final is not None and final.header["source"]["reconnects"] >= 1
        # Any outage: the return waits at most one backoff step at its cap, then the stream opens;
        # the cap may take half the budget, opening and the first inference the other half.
        assert SourceConfig().reconnect_max_s <= RESUME_LIMIT_S / 2
    finally:
        cam.close()
    figures.record("camera_dies_and_returns", outage_s=OUTAGE_S, status_reported_down_s=round(t_reported, 2),
                   resume_after_return_s=round(t_resume, 2), seq_before=before[-1].header["seq"],
                   seq_after=resumed.header["seq"], masks_lost=0, reconnects=final.header["source"]["reconnects"],
                   reconnect_max_s=SourceConfig().reconnect_max_s, same_run_id=True)
