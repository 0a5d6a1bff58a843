"""Disk full while recording, and a kill -9 in the middle of a write.

The recordings go to a 256 KiB tmpfs mounted by the test (skipped, with the reason, where
mounting is not permitted).  With a size cap below the filesystem's, the oldest files are
rotated out and recording never stops; with a cap above it, the disk fills, recording stops with
one clear error, and the live stream goes on.  After ``kill -9``, every record but a torn last
one reads back, byte for byte what the subscriber received.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from edge import wire
from edge.recording import read_records
from faultkit import daemon_args, log_times, wait_for

pytestmark = pytest.mark.timeout(90)

FS_BYTES = 256 * 1024


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        reason = "mounting a size-limited tmpfs needs root: skipped"
        print(reason)
        pytest.skip(reason)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        reason = f"cannot mount a tmpfs here: {r.stderr.strip()}"
        print(reason)
        pytest.skip(reason)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def recorded(folder: Path) -> list[list[bytes]]:
    return [r.frames for r in read_records(folder)]


def test_rotation_keeps_the_recording_under_its_cap(student_onnx, endpoint, subscriber, make_video, edge_daemon,
                                                    small_fs, figures):
    rec = small_fs / "rec"
    sub = subscriber(endpoint)
    env = {"CRACK_EDGE_RECORD__MAX_FILE_BYTES": "32768", "CRACK_EDGE_RECORD__MAX_TOTAL_BYTES": "131072"}
    d = edge_daemon(*daemon_args(student_onnx, endpoint, "--source", str(make_video("clip.mp4", 40)),
                                 "--record", str(rec), "--wait-subscriber", "15"), env=env)
    # Run until the recording has written twice the filesystem's size through rotation.
    assert wait_for(lambda: d.log().count("event=recording_rotated_out") >= 12 or d.proc.poll() is not None, 60), \
        d.log()[-3000:]
    status = sub.until(lambda m: m.kind == "status" and m.header["published"] > 0, timeout=5)
    d.terminate()
    assert d.wait(15) == 0, d.log()[-3000:]
    files = sorted(rec.glob("*.crec"))
    total = sum(f.stat().st_size for f in files)
    assert "recording stopped" not in d.log()
    assert status.header["record"] == {"enabled": True, "active": True, "errors": 0}
    assert total <= 131072 + 32768
    assert int(files[0].name.split("-")[1].split(".")[0]) > 0, "the oldest files were not deleted"
    msgs = recorded(rec)
    assert msgs, "what is left reads back"
    figures.record("disk_rotation", fs_bytes=FS_BYTES, max_total_bytes=131072, files_rotated_out=d.log().count(
        "event=recording_rotated_out"), bytes_on_disk=total, records_readable=len(msgs), record_errors=0)


def test_disk_full_stops_recording_once_and_streaming_goes_on(student_onnx, endpoint, subscriber, make_video,
                                                              edge_daemon, small_fs, figures):
    rec = small_fs / "rec"
    sub = subscriber(endpoint)
    d = edge_daemon(*daemon_args(student_onnx, endpoint, "--source", str(make_video("clip.mp4", 40)),
                                 "--record", str(rec), "--wait-subscriber", "15"))
    assert wait_for(lambda: "recording stopped" in d.log() or d.proc.poll() is not None, 60), d.log()[-3000:]
    t_full = log_times(d.log_path, "recording stopped")[0]
    # The stream goes on: masks published well after the disk filled, seq without gaps.
    masks = []
    while not masks or masks[-1].header["t_publish"] < t_full + 2.0:
        m = sub.until(lambda m: m.kind == "mask", timeout=10)
        assert m is not None, "the live stream stopped with the disk"
        masks.append(m)
    status = sub.until(lambda m: m.kind == "status", timeout=5)
    d.terminate()
    assert d.wait(15) == 0, d.log()[-3000:]
    log = d.log()
    errors = [x for x in log.splitlines() if " ERROR " in x and "recording" in x]
    assert len(errors) == 1, f"one clear error, not one per message: {errors}"
    line = errors[0]
    assert "No space left on device" in line and str(rec) in line, line
    assert status.header["record"] == {"enabled": True, "active": False, "errors": 1}
    seqs = [m.header["seq"] for m in masks]
    after = [m for m in masks if m.header["t_publish"] > t_full]
    msgs = recorded(rec)
    kinds = [wire.decode_header(f)[0] for f in msgs]
    rec_seqs = [wire.decode_header(f)[2]["seq"] for f, k in zip(msgs, kinds) if k == "mask"]
    assert rec_seqs == list(range(len(rec_seqs))), "the recording up to the full disk reads back whole"
    used = sum(f.stat().st_size for f in rec.glob("*.crec"))
    figures.record("disk_full", fs_bytes=FS_BYTES, bytes_recorded=used, records_readable=len(msgs),
                   error_lines=1, masks_after_full=len(after), seq_gaps_after_full=seqs != list(range(seqs[0], seqs[0] + len(seqs))),
                   error=line.split("error=", 1)[1][:120])


def test_kill_9_mid_write_loses_only_the_torn_record(student_onnx, endpoint, subscriber, make_video, edge_daemon,
                                                     tmp_path, figures):
    rec = tmp_path / "rec"
    sub = subscriber(endpoint)
    d = edge_daemon(*daemon_args(student_onnx, endpoint, "--source", str(make_video("clip.mp4", 40)),
                                 "--record", str(rec), "--wait-subscriber", "15"))
    got: list[list[bytes]] = []
    t_end = time.monotonic() + 30
    while len([f for f in got if f[0].startswith(b"mask/")]) < 60 and time.monotonic() < t_end:
        frames = sub.recv_raw(5)
        assert frames is not None, d.log()[-3000:]
        got.append(frames)
    os.kill(d.pid, signal.SIGKILL)  # mid-stream: the daemon is writing records continuously
    assert d.wait(10) == -signal.SIGKILL
    while (frames := sub.recv_raw(0.5)) is not None:  # what was still in flight
        got.append(frames)
    msgs = recorded(rec)
    files = sorted(rec.glob("*.crec"))
    assert len(files) == 1
    whole = 16 + sum(8 + 4 + 12 + sum(4 + len(f) for f in m) for m in msgs)
    torn = files[0].stat().st_size - whole
    # Records are written after each send, in send order.  Heartbeats sent before the subscriber
    # came are recorded too; from its first message on, the recording is a prefix of what it
    # got, missing at most the record being written at the kill.
    rec_frames = [list(map(bytes, m)) for m in msgs]
    got_frames = [list(map(bytes, f)) for f in got]
    start = rec_frames.index(got_frames[0])
    assert all(wire.decode_header(f)[0] == "status" for f in rec_frames[:start])
    tail = rec_frames[start:]
    assert tail == got_frames[:len(tail)]
    assert len(tail) >= len(got_frames) - 1, (len(tail), len(got_frames))
    assert 0 <= torn
    figures.record("kill_9_mid_write", messages_received=len(got), records_read_back=len(msgs),
                   records_matching_received=len(tail), torn_tail_bytes=torn, lost_records=len(got) - len(tail))
