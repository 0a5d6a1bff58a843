"""record -> replay -> record with real sockets: same bytes, same timing, speed, loop, clear errors."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge.recording import RecordingWriter, read_records
from viewer_testkit import Messages, endpoint, run_cli


def _publish_sample(pub, n: int = 10, gap_s: float = 0.05) -> list[list[bytes]]:
    m = Messages(vehicle_id="rr")
    sent = []
    for i in range(n):
        frames = m.status() if i % 5 == 4 else m.mask(with_frame=i % 3 != 0)
        pub.send(frames)
        sent.append(frames)
        time.sleep(gap_s)  # real spacing, so the recording has timing to reproduce
    return sent


@pytest.fixture
def sample_recording(cli, pub, tmp_path: Path) -> tuple[Path, list[list[bytes]]]:
    rec = tmp_path / "rec1"
    recorder = cli("record", "--connect", pub.endpoint, "--out", rec, "--count", 10)
    pub.wait_subscriber()
    sent = _publish_sample(pub)
    assert recorder.wait(30) == 0, recorder.err
    assert "event=record_summary" in recorder.err and "messages=10 masks=8 statuses=2" in recorder.err
    return rec, sent


def test_record_writes_every_message_verbatim(sample_recording) -> None:
    rec, sent = sample_recording
    records = list(read_records(rec))
    assert [r.frames for r in records] == sent
    gaps = [b.t_recv - a.t_recv for a, b in zip(records, records[1:])]
    assert all(0.02 < g < 0.5 for g in gaps), gaps


def test_record_replay_record_gives_the_same_messages_and_timing(cli, sample_recording, tmp_path: Path) -> None:
    rec, sent = sample_recording
    ep = endpoint()
    rec2 = tmp_path / "rec2"
    recorder = cli("record", "--connect", ep, "--out", rec2, "--count", 10)
    replay = cli("replay", rec, "--bind", ep, "--wait-subscriber", 15)
    assert replay.wait(30) == 0, replay.err
    assert recorder.wait(30) == 0, recorder.err
    a, b = list(read_records(rec)), list(read_records(rec2))
    assert [r.frames for r in b] == [r.frames for r in a] == sent
    da = [y.t_recv - x.t_recv for x, y in zip(a, a[1:])]
    db = [y.t_recv - x.t_recv for x, y in zip(b, b[1:])]
    assert abs(sum(db) - sum(da)) < 0.15, (da, db)
    assert max(abs(x - y) for x, y in zip(da, db)) < 0.1, (da, db)
    assert "event=replay_summary sent=10 passes=1" in replay.err


def test_replay_speed_and_loop(cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    m = Messages(vehicle_id="fast")
    with RecordingWriter(src) as w:
        for i in range(5):
            w.write(m.mask(), 1000.0 + i * 0.4)  # 1.6 s of recording
    ep = endpoint()
    rec = tmp_path / "looped"
    recorder = cli("record", "--connect", ep, "--out", rec, "--count", 12)
    replay = cli("replay", src, "--bind", ep, "--speed", 8, "--loop", "--wait-subscriber", 15)
    assert recorder.wait(30) == 0, recorder.err
    assert replay.stop(10) == 0, replay.err
    got = list(read_records(rec))
    seqs = [int(r.frames[1].split(b'"seq":')[1].split(b",")[0]) for r in got]
    assert seqs == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    span = got[4].t_recv - got[0].t_recv
    assert 0.12 < span < 0.6, span  # 1.6 s at x8 = 0.2 s


def test_errors_have_their_own_exit_status(tmp_path: Path, pub) -> None:
    r = run_cli("replay", tmp_path / "missing", "--bind", endpoint())
    assert r.returncode == 66 and "missing: no such recording" in r.stderr
    junk = tmp_path / "junk.crec"
    junk.write_bytes(b"this is not a recording at all")
    r = run_cli("replay", junk, "--bind", endpoint(), "--wait-subscriber", 0)
    assert r.returncode == 65 and "junk.crec: not a recording" in r.stderr
    good = tmp_path / "g"
    with RecordingWriter(good) as w:
        w.write([b"x"], 1.0)
    r = run_cli("replay", good, "--bind", pub.endpoint)  # the port is taken by the test publisher
    assert r.returncode == 69 and "cannot bind" in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("a file where the recording folder should go")
    r = run_cli("record", "--connect", endpoint(), "--out", blocker / "sub", "--duration", 1)
    assert r.returncode == 73 and "cannot create" in r.stderr  # CANTCREAT, as watch --out
    r = run_cli("replay")
    assert r.returncode == 78 and "replay.file" in r.stderr
