"""A real gpsd fed by its own replay tool gpsfake: the daemon's mask headers carry the log's track,
and unplugging the receiver (killing gpsfake and its gpsd) never stops the masks.

gpsfake replays at -c 0.05 s a sentence (3 sentences an epoch: ~6.7 fixes/s) so the tests take seconds.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from edge.position import GpsdSource
from tests.conftest import free_port
from tests.edge.gpstrack import DLAT, LAT0, LON0, epoch_sentences, sentence, write_nmea

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("gpsfake") is None or shutil.which("gpsd") is None,
                                 reason="gpsd/gpsfake not installed (Debian: apt-get install gpsd gpsd-clients)")]


class Gpsfake:
    def __init__(self, log: Path, port: int, out: Path) -> None:
        self.out = open(out, "ab")
        # Own session: killing the group takes gpsfake and the gpsd it started, like pulling the plug.
        self.proc = subprocess.Popen(["gpsfake", "-q", "-n", "-c", "0.05", "-P", str(port), str(log)],
                                     stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.out.close()


@pytest.fixture
def gpsfake(tmp_path):
    procs: list[Gpsfake] = []

    def start(log: Path, port: int) -> Gpsfake:
        g = Gpsfake(log, port, tmp_path / "gpsfake.log")
        procs.append(g)
        return g

    yield start
    for g in procs:
        g.kill()


def wait_for(pred, timeout: float, step: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


def on_track(h: dict) -> None:
    """Lat, lon and alt of a header lie on the log's track, interpolated with one weight (alt = 520 + k)."""
    assert h["lon"] == pytest.approx(LON0, abs=1e-7)
    k = (h["lat"] - LAT0) / DLAT
    assert -0.01 <= k <= 40
    if h["alt_m"] is not None:  # gpsd's first TPV of a session, from an RMC alone, has no altitude
        assert h["alt_m"] == pytest.approx(520 + k, abs=0.02)
    assert h["heading_deg"] == 0.0 and h["speed_mps"] == pytest.approx(11.0, abs=0.01)


def odd_log(path: Path) -> Path:
    """40 epochs with garbage lines, bad checksums and a jump of an hour in the receiver's time at 20."""
    lines: list[str] = []
    for s in range(40):
        ep = epoch_sentences(float(s))
        if s >= 20:  # the receiver's clock jumps ahead; the position moves on as before
            ep = [_retime(epoch_sentences(float(s))[i], epoch_sentences(float(s) + 3600.0)[i]) for i in range(3)]
        lines += ep
        lines += ["$GPGGA,garbage,,*00", "\x01\x02 line noise \xfe", sentence("GPRMC,bogus")[:-2] + "ZZ"]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="latin-1")
    return path


def _retime(at_s: str, at_later: str) -> str:
    """``at_s`` with the time field (and RMC date) of ``at_later``, checksum recomputed."""
    a, b = at_s[1:at_s.index("*")].split(","), at_later[1:at_later.index("*")].split(",")
    if a[0].endswith(("GGA", "RMC")):
        a[1] = b[1]
    if a[0].endswith("RMC"):
        a[9] = b[9]
    return sentence(",".join(a))


def test_gpsd_source_follows_the_log_and_comes_back_after_unplugging(tmp_path, gpsfake):
    log = write_nmea(tmp_path / "drive.nmea", 40)
    port = free_port()
    g = gpsfake(log, port)
    src = GpsdSource("127.0.0.1", port, reconnect_min_s=0.1, reconnect_max_s=0.5, stale_s=1.0)
    src.start()
    try:
        assert wait_for(lambda: src.fixes >= 5, 30), src.status()
        h = src.at(time.time() - 0.05)
        assert h["fix"] and h["reason"] == "" and h["source"] == "gpsd" and h["quality"] == "3d", h
        on_track(h)
        st = src.status()
        assert st["state"] == "ok" and st["satellites"] in (None, 9) and st["last_error"] == ""
        g.kill()
        assert wait_for(lambda: src.status()["state"] == "disconnected", 10), src.status()
        gone = src.at(time.time() + 1.5)
        assert (gone["fix"], gone["reason"], gone["lat"]) == (False, "disconnected", None)
        assert src.status()["last_error"]
        n = src.fixes
        time.sleep(1.0)  # past stale_s: only a new fix can give a position now
        assert src.at(time.time())["reason"] == "disconnected"
        t0 = time.monotonic()
        g2 = gpsfake(log, port)
        back = wait_for(lambda: src.fixes > n and src.at(time.time())["fix"], 30)
        assert back, src.status()
        print(f"gpsd back -> fix in at(): {time.monotonic() - t0:.2f} s (includes gpsfake start)")
        assert src.status()["state"] == "ok"
        g2.kill()
    finally:
        src.stop()


def test_daemon_mask_headers_carry_the_gpsd_position(tmp_path, gpsfake, student_onnx, endpoint, subscriber,
                                                     make_images, edge_daemon):
    log = odd_log(tmp_path / "odd.nmea")
    port = free_port()
    g = gpsfake(log, port)
    folder = make_images("frames", 6)
    toml = tmp_path / "edge.toml"
    toml.write_text(f'[position]\nkind = "gpsd"\nport = {port}\nstale_s = 1.0\nreconnect_min_s = 0.1\n'
                    'reconnect_max_s = 0.5\n[publish]\nstatus_period_s = 0.2\n')
    sub = subscriber(endpoint)
    d = edge_daemon("--config", str(toml), "--model", str(student_onnx), "--backend", "onnxruntime", "--threads", "1",
                    "--publish", endpoint, "--inference-size", "64x64", "--vehicle-id", "van-7", "--source",
                    str(folder), "--pace", "--loop")
    # Positions appear once gpsd has fixes; every one lies on the log's track, some between two fixes.
    with_fix = []
    end = time.monotonic() + 40
    def past_jump() -> bool:  # epoch 22 on: the receiver's clock has jumped an hour
        return any((h["lat"] - LAT0) / DLAT >= 22 for h in with_fix)

    while (len(with_fix) < 15 or not past_jump()) and time.monotonic() < end:
        m = sub.recv(5)
        if m is not None and m.kind == "mask":
            assert "position" in m.header and m.header["position"]["source"] == "gpsd"
            if m.header["position"]["fix"]:
                with_fix.append(m.header["position"])
    assert len(with_fix) >= 15 and past_jump(), d.log()
    for h in with_fix:
        on_track(h)
        assert 0 <= h["age_s"] < 1.0
    ks = [(h["lat"] - LAT0) / DLAT for h in with_fix]
    assert any(abs(k - round(k)) > 0.05 for k in ks), ks  # interpolated, not snapped to a fix
    status = sub.until(lambda m: m.kind == "status" and "position" in m.header, 10)
    assert status.header["position"]["state"] == "ok" and status.header["position"]["fixes"] > 0

    # Unplug: masks keep coming and say why there is no position; the status says disconnected.
    g.kill()
    t_kill = time.time()
    gone = sub.until(lambda m: m.kind == "mask" and m.header["t_capture"] > t_kill + 1.2, 20)
    assert gone is not None, d.log()
    assert (gone.header["position"]["fix"], gone.header["position"]["reason"]) == (False, "disconnected")
    st = sub.until(lambda m: m.kind == "status" and m.header["position"]["state"] == "disconnected", 10)
    assert st is not None and st.header["position"]["last_error"]

    # Plugged back: fixes return in the headers.
    t_back = time.monotonic()
    gpsfake(log, port)
    back = sub.until(lambda m: m.kind == "mask" and m.header["position"]["fix"], 30)
    assert back is not None, d.log()
    on_track(back.header["position"])
    print(f"gpsd restarted -> first mask with a fix: {time.monotonic() - t_back:.2f} s")
    d.terminate()
    assert d.wait(20) == 0, d.log()
