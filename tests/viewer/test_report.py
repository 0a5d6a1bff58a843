"""`crack-viewer report` on a synthetic drive with drawn ground truth, and its bad inputs."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import exits
from tests.viewer.synthetic_drive import RUN_ID, WIDTH, write_drive

ROOT = Path(__file__).resolve().parents[2]


def _report(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "viewer.cli", "report", *args], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drive")
    write_drive(tmp / "rec")
    r = _report(str(tmp / "rec"), "--out", str(tmp / "out"))
    assert r.returncode == exits.OK, r.stderr
    return tmp / "out", r


def _segs(out: Path) -> list[dict]:
    with (out / "segments.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_segment_figures_match_the_drawn_drive(report):
    out, _ = report
    rows = _segs(out)
    assert len(rows) == 19          # 180 m of track + the last frame sees 8 m ahead
    area = WIDTH * 10
    by = {int(float(r["from_m"]) // 10): r for r in rows}
    # segment 0: one 2 m crack of 1 m2 seen by 3 frames, counted once; surveyed 2..10 m only
    assert float(by[0]["crack_length_m"]) == pytest.approx(2.0)
    assert float(by[0]["cracked_pct"]) == pytest.approx(100 * 1.0 / (WIDTH * 8), abs=0.5)
    assert by[0]["condition"] == "good"
    # segment 2: two cracks, 3 m2 -> 8.6 % fair; counts per type and severity
    assert float(by[2]["crack_length_m"]) == pytest.approx(4.0)
    assert float(by[2]["cracked_pct"]) == pytest.approx(100 * 3.0 / area, abs=0.5)
    assert by[2]["condition"] == "fair"
    assert (by[2]["n_transverse"], by[2]["n_longitudinal"], by[2]["n_medium"], by[2]["n_low"]) == ("1", "1", "1", "1")
    # segment 5: alligator 10 m2 -> 28.6 % poor, widest 90 mm
    assert by[5]["condition"] == "poor" and float(by[5]["max_width_mm"]) == 90.0 and by[5]["n_high"] == "1"
    # segment 11 is on the curve: its crack is found there, once
    assert float(by[11]["crack_length_m"]) == pytest.approx(2.0) and by[11]["condition"] == "good"
    # no fix for frames at 130-150 m: the last fixed frame (127.5 m) sees to 135.5 m, so 130-140 is
    # 55 % covered (surveyed: the rule is >= 50 %), 140-150 is not covered -> not surveyed, never good
    assert float(by[13]["covered_m"]) == pytest.approx(5.5, abs=0.2)
    assert by[14]["condition"] == "not surveyed" and by[14]["cracked_pct"] == ""
    assert by[1]["condition"] == "good" and float(by[1]["crack_length_m"]) == 0.0
    total = sum(float(r["crack_length_m"]) for r in rows)
    assert total == pytest.approx(13.0)     # five cracks, each counted once


def test_geojson_has_a_line_per_segment_and_a_point_per_crack(report):
    out, _ = report
    gj = json.loads((out / "report.geojson").read_text())
    assert gj["type"] == "FeatureCollection"
    segs = [f for f in gj["features"] if f["properties"]["kind"] == "segment"]
    cracks = [f for f in gj["features"] if f["properties"]["kind"] == "crack"]
    assert len(segs) == len(_segs(out)) and len(cracks) == 5
    assert all(f["geometry"]["type"] == "LineString" and len(f["geometry"]["coordinates"]) >= 2 for f in segs)
    assert all(f["properties"]["frame"].startswith(f"van1/{RUN_ID}/") for f in cracks)
    assert (out / "condition.png").stat().st_size > 0 and list((out / "thumbs").glob("*.jpg"))
    assert "http" not in (out / "index.html").read_text().replace("http://www.w3.org/2000/svg", "")


def test_no_positions_gives_frame_order_report_and_says_so(tmp_path):
    write_drive(tmp_path / "rec", positions=False)
    r = _report(str(tmp_path / "rec"), "--out", str(tmp_path / "out"))
    assert r.returncode == exits.OK, r.stderr
    assert "report_no_positions" in r.stderr
    assert "No positions" in (tmp_path / "out" / "index.html").read_text()
    assert not (tmp_path / "out" / "report.geojson").exists()
    assert len((tmp_path / "out" / "frames.csv").read_text().splitlines()) > 10


def test_missing_and_damaged_recordings_exit_cleanly(tmp_path):
    r = _report(str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert r.returncode == exits.NOINPUT and "Traceback" not in r.stderr and "nope" in r.stderr
    bad = tmp_path / "bad.crec"
    bad.write_bytes(b"not a recording at all")
    r = _report(str(bad), "--out", str(tmp_path / "out"))
    assert r.returncode == exits.DATAERR and "Traceback" not in r.stderr
