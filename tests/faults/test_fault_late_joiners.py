"""Late joiners: viewers that connect 0, 50, 200 and 1000 ms after the daemon starts.

The daemon's camera is absent (it keeps retrying), so no mask ever flows: only the status
heartbeat can tell a viewer which vehicle, model and frame size it is watching.  Each viewer
uses the viewer's own socket settings; from the moment its connection is up (ZMTP handshake
done) it must learn all three within one heartbeat period.
"""
from __future__ import annotations

import time

import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

from edge import wire
from faultkit import VEHICLE, daemon_args, log_times, wait_for
from models.card import sha256_file
from viewer.sockets import subscriber as viewer_socket

pytestmark = pytest.mark.timeout(90)

DELAYS_MS = (0, 50, 200, 1000)
PERIOD_S = wire.Defaults.STATUS_PERIOD_S


def test_late_joiners_learn_vehicle_model_and_size(student_onnx, endpoint, edge_daemon, tmp_path, zmq_ctx, figures):
    t_start = time.time()
    d = edge_daemon(*daemon_args(student_onnx, endpoint, "--source", str(tmp_path / "camera-not-plugged-in")))
    pending = sorted(DELAYS_MS)
    joined: dict[int, dict] = {}
    poller = zmq.Poller()
    by_socket: dict = {}
    deadline = time.monotonic() + 40
    try:
        # Wait for the monitor's handshake event too: on a loaded machine it can come after the
        # first message (a missing one failed the test when the machine was busy).
        while pending or not all("t_learn" in j and "t_handshake" in j for j in joined.values()):
            assert time.monotonic() < deadline, f"viewers did not all learn in time: {joined}\n{d.log()[-2000:]}"
            while pending and time.time() - t_start >= pending[0] / 1000:
                delay = pending.pop(0)
                sock = viewer_socket(zmq_ctx, [endpoint])
                mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
                joined[delay] = {"sock": sock, "mon": mon, "t_connect": time.time()}
                for s in (sock, mon):
                    poller.register(s, zmq.POLLIN)
                    by_socket[s] = delay
            for s, _ in poller.poll(10):
                j = joined[by_socket[s]]
                if s is j["mon"]:
                    parse_monitor_message(s.recv_multipart())
                    j.setdefault("t_handshake", time.time())
                    continue
                msg = wire.decode(s.recv_multipart())
                if "t_learn" not in j:
                    h = msg.header
                    j.update(t_learn=time.time(), kind=msg.kind, vehicle=h["vehicle_id"], model=h["model_sha256"],
                             size=(h["width"], h["height"]))
    finally:
        for j in joined.values():
            j["sock"].disable_monitor()
            j["mon"].close(0)
            j["sock"].close(0)
    assert wait_for(lambda: log_times(d.log_path, "edge.daemon ready"), 5)
    t_ready = log_times(d.log_path, "edge.daemon ready")[0]
    sha = sha256_file(student_onnx)
    out = {}
    for delay, j in sorted(joined.items()):
        assert (j["kind"], j["vehicle"], j["model"], j["size"]) == ("status", VEHICLE, sha, (64, 64)), j
        assert "t_handshake" in j, f"no handshake event for the viewer at {delay} ms"
        learn_s = j["t_learn"] - j["t_handshake"]
        assert learn_s <= PERIOD_S, f"viewer at {delay} ms learned {learn_s:.2f} s after connecting"
        out[f"{delay}ms"] = {"connected_after_ready_s": round(j["t_handshake"] - t_ready, 3),
                             "learned_after_connect_s": round(learn_s, 3),
                             "learned_after_ready_s": round(j["t_learn"] - t_ready, 3)}
    figures.record("late_joiners", heartbeat_period_s=PERIOD_S, daemon_ready_after_start_s=round(t_ready - t_start, 2),
                   viewers=out)
