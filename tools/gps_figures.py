"""Figures for docs/reliability.md: GpsdSource (defaults: backoff 0.5..5 s, stale 2 s) vs gpsfake killed/restarted."""
import os, signal, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, os.getcwd())
from edge.position import GpsdSource
import socket
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]
from tests.edge.gpstrack import write_nmea
log = write_nmea(Path("/tmp/gps_fig.nmea"), 40)
def fake(port):
    return subprocess.Popen(["gpsfake", "-q", "-n", "-c", "0.05", "-P", str(port), str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
def until(pred, dt=0.01):
    while not pred(): time.sleep(dt)
for outage in (1.0, 6.0, 20.0):
    port = free_port(); g = fake(port)
    src = GpsdSource("127.0.0.1", port); t = time.monotonic(); src.start()
    until(lambda: src.fixes >= 3); first = time.monotonic() - t
    os.killpg(g.pid, signal.SIGKILL); g.wait(); t = time.monotonic()
    until(lambda: src.status()["state"] == "disconnected"); detect = time.monotonic() - t
    until(lambda: not src.at(time.time())["fix"]); nofix = time.monotonic() - t
    time.sleep(max(0, outage - (time.monotonic() - t)))
    n = src.fixes; g = fake(port); t = time.monotonic()
    until(lambda: src.fixes > n and src.at(time.time())["fix"]); back = time.monotonic() - t
    print(f"outage={outage:4.1f}s start->3 fixes={first:.2f}s kill->disconnected={detect:.3f}s "
          f"kill->fix false in at()={nofix:.2f}s gpsd back->fix={back:.2f}s reconnects={src.reconnects}")
    os.killpg(g.pid, signal.SIGKILL); g.wait(); src.stop()
# gpsfake alone: time from launch to gpsd accepting + first TPV (what 'back' includes)
