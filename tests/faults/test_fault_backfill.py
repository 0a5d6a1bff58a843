"""Nothing lost (issue #17): the desktop recording fills its gaps from the vehicle's own recording.

Two network namespaces joined by a veth pair, CurveZMQ on the link as between machines (the rig
of test_fault_partition.py).  The daemon records locally and serves its history on a second
port; ``crack-viewer record`` on the desktop side backfills.  Four cases, each with its own
daemon run: the vehicle's link goes down; an nftables blackhole (no FIN, no RST); the recorder
restarted in the middle of the run onto its own folder; the recorder started late.  Each time,
once the daemon has finished, the desktop recording holds every mask seq of the run from 0,
each byte-identical to the vehicle's recording.

The history is paced to its minimum (64 KiB/s) so that backfill takes seconds, and the live
mask rate at the desktop during backfill is measured against the rate after it (a figure for
docs/reliability.md; asserted only loosely).  Durations: CI runs shortened outages (below);
``CRACK_FAULT_FULL=1`` runs the documented ones (link down 20 s, blackhole 15 s, late start 30 s).
"""
from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import pytest

from edge.recording import read_in_seq_order, read_records
from faultkit import VEHICLE, NetnsPair, log_times, require_netns, sh, stop_process, wait_for, write_clip
from viewer.backfill import mask_key

FULL = os.environ.get("CRACK_FAULT_FULL") == "1"
LINK_DOWN_S = 20.0 if FULL else 8.0
BLACKHOLE_S = 15.0 if FULL else 6.0
LATE_S = 30.0 if FULL else 10.0
RESTART_GAP_S = 10.0 if FULL else 5.0
FPS = 10.0
HISTORY_RATE = 65536   # bytes/s, history.rate_bytes_per_s's minimum
AFTER_S = 5.0          # live traffic after backfill drained: the rate without backfill
D_ADDR, V_ADDR = "10.214.0.1", "10.214.0.2"
PUB, HIST = 5555, 5556

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]



class Rig(NetnsPair):
    """Two namespaces; the daemon (recording, history) in one, the desktop recorder in the other."""

    def __init__(self, root: Path, model: Path) -> None:
        super().__init__(root, "bf", D_ADDR, V_ADDR)
        self.model = model
        self.clip = write_clip(root / "clip.mp4", 40, fps=FPS)
        self.denv["CRACK_EDGE_HISTORY__RATE_BYTES_PER_S"] = str(HISTORY_RATE)
        self.vehicle_rec = root / "vehicle"
        self.desk_rec = root / "desk"

    def start_daemon(self) -> None:
        self.spawn(self.ns_d, "daemon", self.denv, "edge.cli", "run", "--source", str(self.clip), "--pace", "--loop",
                   "--model", str(self.model), "--backend", "onnxruntime", "--threads", "1",
                   "--inference-size", "64x64", "--vehicle-id", VEHICLE, "--publish", f"tcp://0.0.0.0:{PUB}",
                   "--record", str(self.vehicle_rec), "--history", f"tcp://0.0.0.0:{HIST}")

    def start_recorder(self, name: str = "recorder") -> None:
        self.spawn(self.ns_v, name, self.env, "viewer.cli", "record", "--connect", f"tcp://{D_ADDR}:{PUB}",
                   "--out", str(self.desk_rec), "--stale-after", "3", *self.client)

    def start_watch(self) -> None:
        self.spawn(self.ns_v, "watch", self.env, "viewer.cli", "watch", "--headless", "--out", str(self.root / "watch"),
                   "--connect", f"tcp://{D_ADDR}:{PUB}", "--stale-after", "3", "--tile-width", "160",
                   "--refresh-hz", "5", *self.client)

    def vehicle_times(self) -> list[float]:
        """When the daemon recorded each mask, just after publishing it."""
        return [r.t_recv for r in read_records(self.vehicle_rec) if mask_key(r.frames)]

    def vehicle_masks(self) -> dict[int, list[bytes]]:
        return {k[1]: r.frames for r in read_records(self.vehicle_rec) if (k := mask_key(r.frames))} \
            if self.vehicle_rec.exists() else {}

    def desk_records(self) -> list:
        return [r for r in read_in_seq_order(self.desk_rec, mask_key) if mask_key(r.frames)]

    def stop(self, name: str) -> None:
        stop_process(self.procs[name])


@pytest.fixture
def rig(student_onnx, tmp_path):
    require_netns("bf")
    rig = Rig(tmp_path, student_onnx)
    try:
        yield rig
    finally:
        rig.close()


def live_rate(records: list, t0: float, t1: float) -> float:
    """Live (not backfilled) masks the desktop recorded per second in [t0, t1), by its own receive time."""
    n = sum(1 for r in records if not r.backfilled and t0 <= r.t_recv < t1)
    return n / (t1 - t0) if t1 > t0 else math.nan


def run_case(rig: Rig, case: str, disturb, figures, late: bool = False, recorder_log: str = "recorder",
             watch: bool = False) -> dict:
    rig.start_daemon()
    if watch:
        rig.start_watch()
    if late:
        assert wait_for(lambda: len(rig.vehicle_masks()) >= 1, 60), "the daemon published nothing"
        time.sleep(LATE_S)
        t_back = time.time()
        rig.start_recorder()
    else:
        rig.start_recorder()
        # Six seconds of live traffic at the desk first.
        assert wait_for(lambda: rig.desk_rec.exists() and len(rig.desk_records()) >= 6 * FPS * 0.8, 60), \
            "the desktop recorder did not receive masks across the veth pair"
        t_back = disturb()
    log = rig.root / f"{recorder_log}.log"
    drained = wait_for(lambda: [t for t in log_times(log, "event=backfill_drained") if t > t_back], 90, step=0.2)
    assert drained, f"backfill did not drain:\n{log.read_text()[-3000:]}"
    starts = [t for t in log_times(log, "event=backfill_start") if t > t_back - 1]
    time.sleep(AFTER_S)
    assert rig.procs["daemon"].poll() is None, "the daemon died"
    rig.stop("daemon")
    time.sleep(1.5)  # the last masks and the final status reach the desk
    rig.stop(recorder_log)
    if watch:
        rig.stop("watch")
    vehicle = rig.vehicle_masks()
    published = rig.vehicle_times()
    desk = rig.desk_records()
    seqs = [mask_key(r.frames)[1] for r in desk]
    assert seqs == list(range(len(vehicle))) == sorted(vehicle), \
        f"desk holds {len(seqs)} masks, the vehicle {len(vehicle)}; missing {sorted(set(vehicle) - set(seqs))[:20]}"
    assert all(r.frames == vehicle[s] for r, s in zip(desk, seqs)), "a desk record is not the vehicle's bytes"
    backfilled = sum(r.backfilled for r in desk)
    assert backfilled > 0, "nothing was backfilled: the case did not make a gap"
    t_start, t_end = (starts[0] if starts else drained[0]), drained[0]
    during = live_rate(desk, t_start, t_end)
    without = live_rate(desk, t_end + 0.5, t_end + AFTER_S - 0.5)
    published_during = sum(1 for t in published if t_start <= t < t_end) / (t_end - t_start) if t_end > t_start else 0
    # A loose bound only (the box is shared): the figures go to docs/reliability.md.
    if t_end - t_start >= 2.0 and without > 0:  # too short a window says nothing; the figure is kept anyway
        assert during >= 0.5 * without, (during, without)
    text = log.read_text()
    figures.record(case, full_durations=FULL, masks=len(vehicle), backfilled=backfilled,
                   backfill_s=round(t_end - t_start, 2), history_rate_bytes_per_s=HISTORY_RATE,
                   live_rate_during_backfill_hz=round(during, 2), live_rate_without_backfill_hz=round(without, 2),
                   live_rate_ratio=round(during / without, 3) if without else None,
                   daemon_publish_rate_during_backfill_hz=round(published_during, 2),
                   lost_lines=text.count("event=backfill_lost"), byte_identical=True)
    return {"backfilled": backfilled}


def test_link_down_is_backfilled(rig, figures):
    def disturb() -> float:
        sh("ip", "-n", rig.ns_d, "link", "set", rig.if_d, "down")
        time.sleep(LINK_DOWN_S)
        sh("ip", "-n", rig.ns_d, "link", "set", rig.if_d, "up")
        return time.time()
    run_case(rig, f"backfill_link_down_{LINK_DOWN_S:g}s", disturb, figures, watch=True)
    # The watch beside the recorder counted the masks it missed live, and got them all back.
    lines = (rig.root / "watch.log").read_text().splitlines()
    stats = [line for line in lines if "event=vehicle_stats" in line]
    assert stats, "the watch wrote no figures"
    fields = dict(kv.split("=", 1) for kv in stats[-1].split() if "=" in kv)
    mask_drops = sum(int(line.rsplit("lost=", 1)[1].split()[0]) for line in lines
                     if "event=seq_gap" in line and "kind=mask" in line)
    assert mask_drops > 0 and int(fields["recovered"]) == mask_drops, (mask_drops, stats[-1])


def test_blackhole_is_backfilled(rig, figures):
    if shutil.which("nft") is None:
        reason = "nft (nftables) is not installed: blackhole case skipped (CI installs it)"
        print(reason)
        pytest.skip(reason)

    def disturb() -> float:
        for ns, dev in ((rig.ns_d, rig.if_d), (rig.ns_v, rig.if_v)):
            sh("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "crackbf")
            sh("ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "crackbf", "in",
               "{ type filter hook input priority 0 ; policy accept ; }")
            sh("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "crackbf", "in", "iifname", dev, "drop")
        time.sleep(BLACKHOLE_S)
        for ns in (rig.ns_d, rig.ns_v):
            sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "crackbf")
        return time.time()
    run_case(rig, f"backfill_blackhole_{BLACKHOLE_S:g}s", disturb, figures)


def test_recorder_restarted_mid_run_is_backfilled(rig, figures):
    def disturb() -> float:
        rig.stop("recorder")
        time.sleep(RESTART_GAP_S)
        rig.start_recorder("recorder2")
        return time.time()
    run_case(rig, f"backfill_recorder_restart_{RESTART_GAP_S:g}s", disturb, figures, recorder_log="recorder2")


def test_late_recorder_is_backfilled_from_seq_0(rig, figures):
    run_case(rig, f"backfill_late_start_{LATE_S:g}s", None, figures, late=True)
