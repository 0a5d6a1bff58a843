"""Position sources without gpsd: the NMEA parser, interpolation, log alignment, EXIF GPS, fixed."""
from __future__ import annotations

import itertools
import math
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture import CaptureThread, parse_source
from edge.config import PositionConfig, SourceConfig
from edge.position import (Fix, FixRing, NmeaParser, PositionError, exif_gps, interpolate, nmea_checksum_ok,
                           open_position, read_gpx, read_nmea_log)
from tests.edge.gpstrack import DLAT, LAT0, LON0, T0, epoch_sentences, sentence, track, write_gpx, write_nmea
from tests.media import write_video

REPO = Path(__file__).resolve().parents[2]


def test_nmea_parser_reads_gga_rmc_vtg_with_the_log_time():
    p = NmeaParser()
    fixes = [p.feed(s) for s in epoch_sentences(3.5)]
    rmc, gga, vtg = fixes
    assert vtg is None
    assert rmc.t == gga.t == T0 + 3.5
    lat, lon = track(3.5)
    assert gga.lat == pytest.approx(lat, abs=1e-7) and gga.lon == pytest.approx(lon, abs=1e-7)
    assert gga.alt_m == pytest.approx(523.5) and gga.satellites == 9 and gga.quality == "3d"
    assert rmc.speed_mps == pytest.approx(21.38 * 0.514444, rel=1e-4)
    assert p.speed == pytest.approx(39.6 / 3.6) and p.course == 0.0
    assert p.counts["bad_checksum"] == p.counts["garbage"] == 0


def test_bad_checksums_and_garbage_are_dropped_and_counted():
    p = NmeaParser()
    good = epoch_sentences(1.0)[0]
    assert nmea_checksum_ok(good)
    bad = good[:-2] + ("00" if good[-2:] != "00" else "11")
    assert p.feed(bad) is None and p.counts["bad_checksum"] == 1
    assert p.feed("\x00\xffnoise") is None and p.feed(b"$" + b"A" * 500) is None
    assert p.feed(sentence("GPGGA,notatime,xx,N")) is None   # checksum right, fields wrong
    assert p.counts["garbage"] == 3
    assert p.feed(sentence("GPGGA,100000.00,,,,,0,00,,,M,,M,,")) is None and p.counts["no_fix"] == 1
    assert p.feed(good) is not None and p.counts["fixes"] == 1


def test_southern_western_hemispheres():
    p = NmeaParser()
    f = p.feed(sentence("GPRMC,120000.00,A,3351.0000,S,15112.0000,W,0.0,90.0,010524,,,A"))
    assert f.lat == pytest.approx(-33.85) and f.lon == pytest.approx(-151.2) and f.heading_deg == 90.0


def test_interpolation_is_linear_and_heading_goes_round_the_circle():
    a = Fix(100.0, 48.0, 11.0, 500.0, 10.0, 350.0)
    b = Fix(101.0, 48.001, 11.002, 502.0, 12.0, 10.0)
    f, age = interpolate(a, b, 100.25, max_gap_s=5)
    assert (f.lat, f.lon, f.alt_m, f.speed_mps) == pytest.approx((48.00025, 11.0005, 500.5, 10.5))
    assert f.heading_deg == pytest.approx(355.0) and age == pytest.approx(0.25)
    f, _ = interpolate(a, b, 100.75, 5)
    assert f.heading_deg == pytest.approx(5.0)
    f, age = interpolate(a, Fix(200.0, 49, 12), 100.5, max_gap_s=5)  # too far apart: the nearer one, aged
    assert f is a and age == pytest.approx(0.5)
    assert interpolate(None, None, 1.0, 5) == (None, math.inf)


def test_a_live_frame_past_the_newest_fix_goes_on_along_the_last_two():
    p, b = Fix(100.0, 48.0, 11.0, 500.0, 10.0, 0.0), Fix(101.0, 48.001, 11.0, 501.0, 10.0, 0.0)
    f, age = interpolate(b, None, 101.4, 5, prev=p)
    assert (f.lat, f.alt_m) == pytest.approx((48.0014, 501.4)) and age == pytest.approx(0.4)
    f, age = interpolate(b, None, 103.0, 5, prev=p)   # beyond one interval: the last fix, aged
    assert f is b and age == pytest.approx(2.0)
    b2 = Fix(101.0, 48.001, 11.0, 501.0, segment=1)  # after a reconnect: no line across the gap
    assert interpolate(b2, None, 101.4, 5, prev=p)[0] is b2
    assert interpolate(p, b2, 100.9, 5)[0] is b2


def test_ring_is_bounded_and_a_jump_back_in_time_starts_it_again():
    r = FixRing(maxlen=10)
    for i in range(25):
        r.add(Fix(float(i), 0, 0))
    assert r.span() == (15.0, 24.0)
    r.add(Fix(3.0, 0, 0))
    assert r.span() == (3.0, 3.0)
    p, b, a = r.around(2.0)
    assert p is b is None and a.t == 3.0


def cfg(**kw) -> PositionConfig:
    return PositionConfig(**kw)


def test_nmea_log_aligned_by_time_with_offset(tmp_path):
    log = write_nmea(tmp_path / "drive.nmea", 20, garbage=True)
    fixes, counts = read_nmea_log(log)
    assert len(fixes) == 20 and counts["bad_checksum"] == 40 and counts["garbage"] == 20
    src = open_position(cfg(kind="nmea-log", path=log, start_time=T0 + 5, offset_s=2.0), "clip.mp4")
    first = src.at(1000.0)                # the first frame: start_time + offset
    assert first["fix"] and first["lat"] == pytest.approx(track(7.0)[0], abs=1e-7)
    mid = src.at(1003.4)
    assert mid["lat"] == pytest.approx(LAT0 + DLAT * 10.4, abs=1e-7) and mid["age_s"] == pytest.approx(0.4, abs=1e-6)
    assert mid["alt_m"] == pytest.approx(530.4) and mid["source"] == "nmea-log" and mid["reason"] == ""
    past = src.at(1030.0)
    assert (past["fix"], past["reason"], past["lat"]) == (False, "out_of_log", None)


def test_gpx_log_and_start_time_defaults_to_the_video_mtime(tmp_path):
    gpx = write_gpx(tmp_path / "drive.gpx", 10)
    assert len(read_gpx(gpx)) == 10
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    import os
    os.utime(video, (T0 + 2, T0 + 2))
    src = open_position(cfg(kind="gpx-log", path=gpx), str(video))
    h = src.at(50.0)
    h = src.at(51.5)
    assert h["lat"] == pytest.approx(track(3.5)[0], abs=1e-7) and h["lon"] == pytest.approx(LON0)


def test_a_machine_slower_than_the_clip_keeps_every_frame_on_the_log(tmp_path):
    """A real clip read by the capture thread, each frame taking twice its period to process.

    By wall clock the last frames would land past the log's end; by their time in the clip each
    frame is where it was filmed.
    """
    video = write_video(tmp_path / "clip.mp4", 20, fps=20.0)     # 0 .. 0.95 s of media
    gpx = write_gpx(tmp_path / "drive.gpx", 2)                   # fixes at T0 and T0 + 1 s
    log_cfg = cfg(kind="gpx-log", path=gpx, start_time=T0, stale_s=0.5)
    got: list = []

    def slow_inference(item, should_stop) -> bool:
        time.sleep(0.15)                                         # 3x the 50 ms frame period
        got.append(item)
        return True

    spec = parse_source(str(video))
    reader = CaptureThread(spec, SourceConfig(uri=str(video), loop=False, pace=True), slow_inference,
                           itertools.count(), 0)
    reader.start()
    reader.join(15)
    assert reader.eos and len(got) == 20
    assert got[-1].t_capture - got[0].t_capture > 1.0 + 0.5     # the wall clock ran past the log

    by_media = open_position(log_cfg, str(video))
    for k, c in enumerate(got):
        h = by_media.at(c.t_capture, c.t_media)
        assert (h["fix"], h["reason"]) == (True, ""), (k, h)
        assert h["lat"] == pytest.approx(track(k / 20.0)[0], abs=1e-7)
    assert by_media.status()["state"] == "ok"
    # A live camera has no media time: the wall-clock rule, under which these frames ran off the log.
    by_wall = open_position(log_cfg, str(video))
    last = [by_wall.at(c.t_capture) for c in got][-1]
    assert (last["fix"], last["reason"]) == (False, "out_of_log")
    assert by_wall.status()["state"] == "out_of_log"


def test_a_log_that_does_not_overlap_the_video_is_refused_naming_the_file(tmp_path):
    log = write_nmea(tmp_path / "old.nmea", 10)
    with pytest.raises(PositionError, match="old.nmea.*does not overlap"):
        open_position(cfg(kind="nmea-log", path=log, start_time=T0 + 86400), "clip.mp4")
    with pytest.raises(PositionError, match="missing.gpx: position log not found"):
        open_position(cfg(kind="gpx-log", path=tmp_path / "missing.gpx", start_time=0), "clip.mp4")


def test_daemon_exits_78_on_a_log_outside_the_video(tmp_path, small_video, student_onnx):
    log = write_nmea(tmp_path / "old.nmea", 10)
    toml = tmp_path / "edge.toml"
    toml.write_text(f'[position]\nkind = "nmea-log"\npath = "{log}"\n')
    r = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(toml), "--source",
                        str(small_video), "--model", str(student_onnx), "--backend", "onnxruntime",
                        "--publish", "tcp://127.0.0.1:*", "--max-frames", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    assert "old.nmea" in r.stderr and "does not overlap" in r.stderr and "Traceback" not in r.stderr


def test_fixed_position_and_none():
    src = open_position(cfg(kind="fixed", lat=52.5, lon=13.4, alt_m=34.0, heading_deg=90.0), "")
    h = src.at(time.time())
    assert h == {"source": "fixed", "fix": True, "reason": "", "lat": 52.5, "lon": 13.4, "alt_m": 34.0,
                 "speed_mps": 0.0, "heading_deg": 90.0, "quality": "fixed-config", "age_s": 0.0}
    assert src.status()["state"] == "ok"
    assert open_position(cfg(), "") is None
    with pytest.raises(PositionError, match="position.lat"):
        open_position(cfg(kind="fixed"), "")


# ------------------------------------------------------------------ EXIF: our own APP1 bytes

def _rational(v: float) -> bytes:
    return struct.pack(">II", int(round(v * 10000)), 10000)


def exif_app1(lat: float, lon: float, alt: float, when: str) -> bytes:
    """A big-endian TIFF with IFD0 -> GPS IFD and Exif IFD (DateTimeOriginal), wrapped as APP1."""
    def dms(v: float) -> bytes:
        a = abs(v)
        d = int(a)
        m = int((a - d) * 60)
        s = ((a - d) * 60 - m) * 60
        return _rational(d) + _rational(m) + _rational(s)

    ifd0_off = 8
    ifd0 = 2 + 2 * 12 + 4
    exif_off = ifd0_off + ifd0
    exif_len = 2 + 12 + 4
    gps_off = exif_off + exif_len
    gps_len = 2 + 6 * 12 + 4
    data_off = gps_off + gps_len
    date = when.encode() + b"\x00"
    lat_at, lon_at, alt_at = data_off + len(date), data_off + len(date) + 24, data_off + len(date) + 48

    def entry(tag, typ, count, value: bytes) -> bytes:
        return struct.pack(">HHI", tag, typ, count) + value.ljust(4, b"\x00")

    t = b"MM\x00\x2a" + struct.pack(">I", ifd0_off)
    t += struct.pack(">H", 2) + entry(0x8769, 4, 1, struct.pack(">I", exif_off)) + \
        entry(0x8825, 4, 1, struct.pack(">I", gps_off)) + b"\x00" * 4
    t += struct.pack(">H", 1) + entry(0x9003, 2, len(date), struct.pack(">I", data_off)) + b"\x00" * 4
    t += struct.pack(">H", 6) + entry(1, 2, 2, b"N\x00" if lat >= 0 else b"S\x00") + \
        entry(2, 5, 3, struct.pack(">I", lat_at)) + entry(3, 2, 2, b"E\x00" if lon >= 0 else b"W\x00") + \
        entry(4, 5, 3, struct.pack(">I", lon_at)) + entry(5, 1, 1, b"\x00") + \
        entry(6, 5, 1, struct.pack(">I", alt_at)) + b"\x00" * 4
    t += date + dms(lat) + dms(lon) + _rational(alt)
    seg = b"Exif\x00\x00" + t
    return b"\xff\xe1" + struct.pack(">H", len(seg) + 2) + seg


def write_geotagged(path: Path, lat: float, lon: float, when: str) -> None:
    ok, jpg = cv2.imencode(".jpg", np.full((64, 96, 3), 128, np.uint8))
    path.write_bytes(b"\xff\xd8" + exif_app1(lat, lon, 512.5, when) + jpg.tobytes()[2:])


def test_exif_gps_of_a_jpeg_we_wrote(tmp_path):
    p = tmp_path / "a.jpg"
    write_geotagged(p, -33.8568, -151.2153, "2024:05:01 10:00:03")
    assert cv2.imread(str(p)) is not None  # still a picture
    f = exif_gps(p.read_bytes())
    assert f.lat == pytest.approx(-33.8568, abs=1e-6) and f.lon == pytest.approx(-151.2153, abs=1e-6)
    assert f.alt_m == pytest.approx(512.5) and f.t == T0 + 3
    ok, plain = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    assert exif_gps(plain.tobytes()) is None and exif_gps(b"not a jpeg") is None
    assert exif_gps(p.read_bytes()[:40]) is None  # truncated: no crash


def test_exif_folder_is_a_log_on_the_photos_clock(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        lat, lon = track(2 * i)
        write_geotagged(folder / f"{i:03d}.jpg", lat, lon, time.strftime("%Y:%m:%d %H:%M:%S", time.gmtime(T0 + 2 * i)))
    src = open_position(cfg(kind="exif"), str(folder))
    assert src.at(500.0)["lat"] == pytest.approx(track(0)[0], abs=1e-6)
    h = src.at(503.0)
    assert h["lat"] == pytest.approx(track(3)[0], abs=1e-6) and h["age_s"] == pytest.approx(1.0)


def test_nmea_serial_reads_a_device_of_lines_and_reopens_it(tmp_path):
    """A FIFO stands in for the receiver's tty (same file semantics); its writer closing is an unplug."""
    import os
    from edge.position import NmeaSerialSource

    fifo = tmp_path / "ttyGPS"
    os.mkfifo(fifo)
    src = NmeaSerialSource(str(fifo), reconnect_min_s=0.05, reconnect_max_s=0.1, stale_s=5.0)
    src.start()
    try:
        for round_ in range(2):
            with open(fifo, "w", encoding="latin-1") as w:
                for s in range(3):
                    w.write("\r\n".join(epoch_sentences(float(s)) + ["$GPGGA,x*00", "\x00junk"]) + "\r\n")
                    w.flush()
            end = time.monotonic() + 10
            while src.fixes < 6 * (round_ + 1) and time.monotonic() < end:
                time.sleep(0.02)
            assert src.fixes == 6 * (round_ + 1), src.status()
            end = time.monotonic() + 10
            while src.status()["state"] != "disconnected" and time.monotonic() < end:
                time.sleep(0.02)
            assert src.status()["last_error"].endswith("end of data")
        assert src.parser.counts["bad_checksum"] == 6 and src.parser.counts["garbage"] == 6
        h = src.at(time.time())
        assert h["fix"] and h["source"] == "nmea-serial" and h["lat"] == pytest.approx(track(2.0)[0], abs=1e-7)
    finally:
        src.stop_event.set()
        try:  # wake the reader waiting in open() for a writer, so that its thread ends
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        src.stop(2.0)
        assert not src.thread.is_alive()


def test_no_fix_reasons_of_a_live_source():
    from edge.position import GpsdSource

    src = GpsdSource("127.0.0.1", 1)          # never started: nothing heard
    assert src.at(time.time())["reason"] == "disconnected"
    src.state = "no_fix"
    assert src.at(time.time())["reason"] == "no_data"
    src._line(b'{"class":"TPV","mode":1}')     # gpsd connected, receiver without a fix
    h = src.at(time.time())
    assert (h["fix"], h["reason"], h["quality"], h["age_s"]) == (False, "no_fix", "none", None)
    src._line(b'{"class":"SKY","uSat":7}')
    src._line(b'{"class":"TPV","mode":3,"lat":48.1,"lon":11.5,"altMSL":500.0,"speed":3.0,"track":359.9}')
    src._line(b'not json')
    h = src.at(time.time())
    assert h["fix"] and h["quality"] == "3d" and h["alt_m"] == 500.0 and h["heading_deg"] == 359.9
    assert src.status()["satellites"] == 7 and src.counts["garbage"] == 1
