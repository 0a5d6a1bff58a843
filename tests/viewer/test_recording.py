"""edge.recording: round trip, rotation, total cap, torn tails, damage, a really full disk."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from edge import recording
from edge.recording import (FILE_HEADER, Record, RecordingDiskFull, RecordingError, RecordingNotFound,
                            RecordingWriter, read_records)


def _msgs(n: int, size: int = 100) -> list[list[bytes]]:
    return [[f"mask/v{i % 3}".encode(), b'{"seq":%d}' % i, bytes([i % 256]) * size] for i in range(n)]


def test_round_trip_keeps_frames_and_times(tmp_path: Path) -> None:
    msgs = _msgs(50) + [[], [b""], [b"x" * 70000]]
    with RecordingWriter(tmp_path, "rt") as w:
        for i, m in enumerate(msgs):
            w.write(m, 1000.0 + i / 8)
    got = list(read_records(tmp_path))
    assert [r.frames for r in got] == msgs
    assert [r.t_recv for r in got] == [1000.0 + i / 8 for i in range(len(msgs))]
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["rt-000000.crec"]
    assert files[0].read_bytes()[:8] == b"CRACKREC"
    assert list(read_records(files[0])) == got


def test_rotates_by_size_and_deletes_oldest_past_total(tmp_path: Path) -> None:
    one = len(recording.encode_record(_msgs(1, 1000)[0], 0.0))
    w = RecordingWriter(tmp_path, "rot", max_file_bytes=FILE_HEADER.size + 3 * one, max_total_bytes=10 * one)
    msgs = _msgs(40, 1000)
    for i, m in enumerate(msgs):
        w.write(m, float(i))
    w.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert all(n.startswith("rot-") for n in files)
    total = sum((tmp_path / n).stat().st_size for n in files)
    assert total <= 10 * one
    # Every file but the last holds exactly three records; the oldest were deleted, not the newest.
    got = list(read_records(tmp_path))
    assert got[-1].frames == msgs[-1]
    assert [r.t_recv for r in got] == [float(i) for i in range(40 - len(got), 40)]
    assert "rot-000000.crec" not in files and len(files) >= 3


def test_new_writer_never_appends_to_an_old_file(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path) as w:
        w.write([b"a"], 1.0)
    with RecordingWriter(tmp_path) as w:
        w.write([b"b"], 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec-000000.crec", "rec-000001.crec"]
    assert [r.frames for r in read_records(tmp_path)] == [[b"a"], [b"b"]]


def test_torn_last_record_is_ignored_at_every_cut(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with RecordingWriter(src) as w:
        for i, m in enumerate(_msgs(5, 40)):
            w.write(m, float(i))
    data = (src / "rec-000000.crec").read_bytes()
    last = len(recording.encode_record(_msgs(5, 40)[4], 4.0))
    cut_file = tmp_path / "cut.crec"
    for cut in range(len(data) - last, len(data)):
        cut_file.write_bytes(data[:cut])
        got = list(read_records(cut_file))
        assert [r.t_recv for r in got] == [0.0, 1.0, 2.0, 3.0], cut


def test_damaged_record_in_the_middle_is_skipped_not_the_file(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path) as w:
        for i, m in enumerate(_msgs(6, 50)):
            w.write(m, float(i))
    path = tmp_path / "rec-000000.crec"
    data = bytearray(path.read_bytes())
    rec_len = len(recording.encode_record(_msgs(1, 50)[0], 0.0))
    data[FILE_HEADER.size + 2 * rec_len + 20] ^= 0xFF  # a flipped bit inside the third record
    path.write_bytes(bytes(data))
    assert [r.t_recv for r in read_records(path)] == [0.0, 1.0, 3.0, 4.0, 5.0]


def test_kill_9_mid_write_leaves_everything_but_the_torn_record(tmp_path: Path) -> None:
    # A real process killed while it writes big records as fast as it can.
    script = (
        "import sys, time\n"
        "from edge.recording import RecordingWriter\n"
        "w = RecordingWriter(sys.argv[1], max_file_bytes=2**30, max_total_bytes=2**31)\n"
        "i = 0\n"
        "while True:\n"
        "    w.write([b'mask/x', b'%d' % i, bytes([i % 256]) * 3_000_000], float(i))\n"
        "    i += 1\n"
        "    if i == 3: print('ready', flush=True)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    finally:
        p.kill()
        p.wait(10)
    got = list(read_records(tmp_path))
    assert len(got) >= 3
    for i, r in enumerate(got):
        assert r.t_recv == float(i) and r.frames[1] == b"%d" % i and r.frames[2] == bytes([i % 256]) * 3_000_000


def test_not_a_recording_and_wrong_version_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.crec"
    bad.write_bytes(b"hello world, this is not it")
    with pytest.raises(RecordingError, match="x.crec: not a recording"):
        list(read_records(bad))
    bad.write_bytes(FILE_HEADER.pack(b"CRACKREC", 99, 0))
    with pytest.raises(RecordingError, match="version 99"):
        list(read_records(bad))
    with pytest.raises(RecordingNotFound, match="nope"):
        list(read_records(tmp_path / "nope"))


def test_record_dataclass_equality() -> None:
    assert Record(1.0, [b"a"]) == Record(1.0, [b"a"])


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 256 KiB tmpfs, so the disk really fills (needs root; skipped otherwise)."""
    mnt = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_raises_a_clear_error_and_keeps_whole_records(small_fs: Path) -> None:
    w = RecordingWriter(small_fs, max_file_bytes=2**30, max_total_bytes=2**31)
    written = 0
    with pytest.raises(RecordingDiskFull, match="No space left"):
        for i in range(1000):
            w.write([b"mask/x", bytes([i % 256]) * 10_000], float(i))
            written += 1
    assert written > 5
    # The writer has stopped; further writes say so instead of writing half records.
    with pytest.raises(RecordingError, match="stopped"):
        w.write([b"x"], 0.0)
    w.close()
    got = list(read_records(small_fs))
    assert len(got) == written
    assert all(r.frames[1] == bytes([i % 256]) * 10_000 for i, r in enumerate(got))
