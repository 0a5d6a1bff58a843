"""Issue #18, recordings: a flipped header byte, a damaged file in a folder, an empty --loop,
verify/--repair and a record size below a file header -- each a defect that failed before its fix."""
from __future__ import annotations

from pathlib import Path

from edge.recording import FILE_HEADER, RecordingWriter, encode_record, read_in_seq_order, read_records, scan_file
from viewer.backfill import mask_key
from viewer_testkit import Messages, endpoint, run_cli


def _recording(folder: Path, n: int = 6, prefix: str = "rec") -> list[list[bytes]]:
    m = Messages(vehicle_id="rp")
    sent = [m.mask(with_frame=False) for _ in range(n)]
    with RecordingWriter(folder, prefix) as w:
        for i, frames in enumerate(sent):
            w.write(frames, 100.0 + i)
    return sent


def test_a_flipped_byte_in_the_file_header_keeps_its_records(tmp_path: Path) -> None:
    sent = _recording(tmp_path)
    f = next(tmp_path.glob("*.crec"))
    for offset in (0, 3, 8):  # magic and version
        data = bytearray(f.read_bytes())
        data[offset] ^= 0x40
        f.write_bytes(bytes(data))
        assert [r.frames for r in read_records(f)] == sent
        report = scan_file(f)
        assert report.header == "damaged" and report.good == len(sent) and report.damaged == 0
        data[offset] ^= 0x40
        f.write_bytes(bytes(data))


def test_replay_skips_a_damaged_file_and_replays_the_others(tmp_path: Path) -> None:
    _recording(tmp_path, 3)
    (tmp_path / "rec-000001.crec").write_bytes(b"garbage, not a recording at all" * 10)
    _recording(tmp_path, 4)  # rec-000002
    r = run_cli("replay", tmp_path, "--bind", endpoint(), "--wait-subscriber", 0, "--speed", 1000)
    assert r.returncode == 0, r.stderr
    assert "event=replay_file_skipped" in r.stderr and "rec-000001.crec" in r.stderr
    assert "event=replay_summary sent=7 passes=1 skipped_files=1" in r.stderr


def test_replay_loop_on_a_recording_without_records_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rec-000000.crec").write_bytes(FILE_HEADER.pack(b"CRACKREC", 1, 0))
    r = run_cli("replay", tmp_path, "--loop", "--bind", endpoint(), "--wait-subscriber", 0, timeout=20)
    assert r.returncode == 65 and "event=replay_empty" in r.stderr, r.stderr


def test_verify_counts_good_damaged_torn_and_repair_keeps_the_good(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    sent = _recording(rec, 6)
    f = next(rec.glob("*.crec"))
    data = bytearray(f.read_bytes())
    second = FILE_HEADER.size + len(encode_record(sent[0], 100.0))
    data[second + 200] ^= 0xFF  # inside record 1's payload
    f.write_bytes(bytes(data) + b"RECd\x00\x10")  # and a torn tail
    r = run_cli("verify", rec)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "good=5 damaged=1" in r.stdout and "torn=1" in r.stdout and "verdict=damaged" in r.stdout
    out = tmp_path / "fixed"
    r = run_cli("verify", rec, "--repair", out)
    assert r.returncode == 1 and "written=5" in r.stdout
    assert [x.frames for x in read_records(out)] == sent[:1] + sent[2:]
    r = run_cli("verify", out)
    assert r.returncode == 0 and "verdict=clean" in r.stdout
    assert run_cli("verify", tmp_path / "none").returncode == 66
    assert run_cli("verify", rec, "--repair", out).returncode == 73  # OUT already holds a recording


def test_record_refuses_a_file_size_below_a_file_header(tmp_path: Path) -> None:
    r = run_cli("record", "--connect", endpoint(), "--out", tmp_path / "r", "--max-file-mb", "0.00001", "--duration", 1)
    assert r.returncode == 78 and "record.max_file_mb" in r.stderr and "Traceback" not in r.stderr


def test_backfilled_records_are_read_back_in_seq_order(tmp_path: Path) -> None:
    m = Messages(vehicle_id="bf")
    masks = [m.mask(with_frame=False) for _ in range(6)]
    status = m.status()
    with RecordingWriter(tmp_path) as w:
        for i in (0, 1, 4, 5):
            w.write(masks[i], 10.0 + i)
        w.write(status, 15.5)
        for i in (2, 3, 3):  # a duplicate is given once
            w.write(masks[i], 10.0 + i, backfilled=True)
    got = list(read_in_seq_order(tmp_path, mask_key))
    assert [r.frames for r in got] == masks + [status]
    assert [r.backfilled for r in got] == [False, False, True, True, False, False, False]
