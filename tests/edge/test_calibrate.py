"""crack-edge calibrate: points and a rendered checkerboard give back a known camera; bad input is
refused with its message and exit status; a calibrated daemon's headers feed the report."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from common import exits
from edge.cli import main
import tomllib

from edge.config import load_config
from edge.measure import Ground, apply
from roadcam import pinhole, square_on

REPO = Path(__file__).resolve().parents[2]
W, H = 640, 480
# Four tape-measured marks of a camera 1000 px focal, 1.5 m up, pitched 20 degrees (roadcam.pinhole).
CAMERA = pinhole(f=1000.0)
ROAD = [(-0.6, 3.0), (0.6, 3.0), (0.8, 6.0), (-0.8, 6.0), (0.0, 4.0)]


def image_of(road: list[tuple[float, float]], Hc: np.ndarray = CAMERA) -> np.ndarray:
    pts, _ = apply(np.linalg.inv(Hc), np.array(road))
    return pts


def calibrate(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["calibrate", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def point_args(img: np.ndarray, road: list[tuple[float, float]]) -> list[str]:
    return [a for (u, v), (x, y) in zip(img, road) for a in ("--point", f"{u},{v},{x},{y}")]


def test_points_file_into_an_existing_config(tmp_path, capsys) -> None:
    pts = tmp_path / "marks.csv"
    img = image_of(ROAD)
    pts.write_text("u,v,x,y  # pixel, then metres\n" + "".join(f"{u:.4f}, {v:.4f}, {x}, {y}\n"
                                                            for (u, v), (x, y) in zip(img, ROAD)))
    cfg = tmp_path / "crack-edge.toml"
    cfg.write_text('vehicle_id = "van-3"\n\n[ground]\nmax_range_m = 15.0\nforward = "-x"\n\n'
                   '[position]\nkind = "fixed"\nlat = 1.0\nlon = 2.0\n')
    code, out, err = calibrate(capsys, "--points", str(pts), "--image-size", f"{W}x{H}", "--write", str(cfg))
    assert code == exits.OK, err
    assert "[ground]" in out and "written to" in err
    loaded = load_config(cfg)
    assert loaded.vehicle_id == "van-3" and loaded.position.kind == "fixed"   # the rest of the file kept
    assert loaded.ground.max_range_m == 15.0 and loaded.ground.forward == "+y"  # its own keys kept, forward set
    g = Ground.from_config(loaded.ground)
    back, _ = apply(g.H, img)
    assert back == pytest.approx(np.array(ROAD), abs=1e-4)
    # A second calibration replaces the section rather than adding a second one (invalid TOML).
    code, _, err = calibrate(capsys, "--points", str(pts), "--image-size", f"{W}x{H}", "--write", str(cfg))
    assert code == exits.OK, err
    assert cfg.read_text().count("[ground]") == 1


def test_write_into_the_shipped_example_config(tmp_path, capsys) -> None:
    # systemd/crack-edge.toml carries a commented [ground] example; --write adds the live section
    # beside it, so the vehicle is calibrated and the example stays for the next reader.
    cfg = tmp_path / "crack-edge.toml"
    shipped = (REPO / "systemd" / "crack-edge.toml").read_text()
    cfg.write_text(shipped)
    img = image_of(ROAD[:4])
    code, _, err = calibrate(capsys, *point_args(img, ROAD[:4]), "--image-size", f"{W}x{H}", "--write", str(cfg))
    assert code == exits.OK, err
    text = cfg.read_text()
    assert "# [ground]" in text and text.count("\n[ground]\n") == 1
    loaded = load_config(cfg)
    assert loaded.ground.enabled and loaded.ground.image_size == (W, H) and loaded.source.mode == "latest"


def test_point_flags_print_a_section_that_loads(tmp_path, capsys) -> None:
    img = image_of(ROAD[:4])
    code, out, err = calibrate(capsys, *point_args(img, ROAD[:4]), "--image-size", f"{W}x{H}")
    assert code == exits.OK, err
    section = tomllib.loads(out)["ground"]
    assert section["image_size"] == [W, H]
    g = Ground.build(section["homography"], (W, H))
    # Any other road point comes back too: the camera is recovered, not only the four marks.
    probe = image_of([(0.3, 8.0), (-1.0, 3.5)])
    assert apply(g.H, probe)[0] == pytest.approx(np.array([(0.3, 8.0), (-1.0, 3.5)]), abs=1e-4)


def render_checkerboard(Hc: np.ndarray, origin: tuple[float, float], square: float, squares: tuple[int, int],
                        size: tuple[int, int] = (W, H), supersample: int = 3) -> np.ndarray:
    """The camera's view of a checkerboard lying on grey road (a white margin around it, as printed)."""
    w, h = size[0] * supersample, size[1] * supersample
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = (u + 0.5) / supersample - 0.5, (v + 0.5) / supersample - 0.5
    X = np.stack([u, v, np.ones_like(u)], -1) @ Hc.T
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = X[..., 0] / X[..., 2], X[..., 1] / X[..., 2]
    i, j = np.floor((x - origin[0]) / square), np.floor((y - origin[1]) / square)
    on_board = (X[..., 2] > 0) & (i >= 0) & (i < squares[0]) & (j >= 0) & (j < squares[1])
    margin = (X[..., 2] > 0) & (i >= -1) & (i < squares[0] + 1) & (j >= -1) & (j < squares[1] + 1)
    img = np.where(margin, 255, 128).astype(np.uint8)
    img[on_board & ((i + j) % 2 == 0)] = 0
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("squares,origin,nearest_left", [
    ((8, 6), (-0.6, 2.6), (-0.45, 2.75)),    # rows across the lane
    ((6, 8), (-0.45, 2.6), (-0.3, 2.75)),    # turned 90 degrees: the pattern's rows run forward
])
def test_checkerboard_recovers_a_known_camera(tmp_path, capsys, squares, origin, nearest_left) -> None:
    # 7x5 inner corners of 15 cm squares, 2.6 m ahead of the camera of roadcam.pinhole(f=1000).
    shot = tmp_path / "board.png"
    cv2.imwrite(str(shot), render_checkerboard(CAMERA, origin, 0.15, squares))
    code, out, err = calibrate(capsys, "--checkerboard", str(shot), "--pattern", "7x5", "--square-mm", "150",
                               f"--board-origin={nearest_left[0]},{nearest_left[1]}")
    assert code == exits.OK, err
    g = Ground.build(tomllib.loads(out)["ground"]["homography"], (W, H))
    # Compare with the true camera over the lower 2/3 of the image (road up to ~7 m).
    v, u = np.mgrid[H // 3:H:20, 0:W:20]
    probe = np.stack([u.ravel(), v.ravel()], 1).astype(np.float64)
    got, truth = apply(g.H, probe)[0], apply(CAMERA, probe)[0]
    err_m = np.hypot(*(got - truth).T)
    dist = np.hypot(*truth.T)
    assert (err_m <= 0.01 * dist).all(), f"worst {err_m.max():.3f} m at {dist[err_m.argmax()]:.1f} m"


REFUSALS = [
    ("three points", lambda t: point_args(image_of(ROAD[:3]), ROAD[:3]), exits.DATAERR, "at least 4 points"),
    ("collinear image", lambda t: ["--point", "10,10,0,1", "--point", "20,20,1,2", "--point", "30,30,2,3",
                                   "--point", "40,40,3,5"], exits.DATAERR, "lie on one line"),
    ("three on a line", lambda t: ["--point", "10,400,0,1", "--point", "300,400,1,1", "--point", "600,400,2,1",
                                   "--point", "300,100,1,5"], exits.DATAERR, "three of the points lie on one line"),
    ("coincident", lambda t: point_args(image_of(ROAD[:2] * 2), ROAD[:2] * 2), exits.DATAERR, "lie on one line"),
    ("behind the camera", lambda t: point_args(image_of(ROAD[:4]), [ROAD[0], ROAD[1], ROAD[3], ROAD[2]]),
     exits.DATAERR, "behind the camera"),
    ("poor fit", lambda t: point_args(image_of(ROAD), ROAD[:4] + [(0.0, 5.0)]), exits.DATAERR, "misses point 5"),
    ("outside the image", lambda t: ["--point", "10,400,0,1", "--point", "900,400,1,1", "--point", "600,100,1,5",
                                     "--point", "10,100,0,5"], exits.DATAERR, "outside the 640x480 image"),
    ("missing points file", lambda t: ["--points", str(t / "nope.csv")], exits.NOINPUT, "no such points file"),
    ("bad points file", lambda t: ["--points", str(_write(t / "p.csv", "1 2 3\n"))], exits.DATAERR, "p.csv:1"),
    ("no board", lambda t: ["--checkerboard", str(_grey(t)), "--pattern", "7x5", "--square-mm", "100",
                            "--board-origin", "0,2"], exits.DATAERR, "no 7x5 checkerboard"),
    ("board without pattern", lambda t: ["--checkerboard", str(_grey(t))], exits.USAGE, "--pattern"),
    ("missing image", lambda t: ["--checkerboard", str(t / "nope.png"), "--pattern", "7x5", "--square-mm", "100",
                                 "--board-origin", "0,2"], exits.NOINPUT, "no such image"),
    ("bad size", lambda t: ["--point", "1,2,3,4", "--image-size", "640by480"], exits.USAGE, "expected WxH"),
    ("no size", lambda t: ["--point", "1,2,3,4"], exits.USAGE, "--image-size"),
]


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def _grey(t: Path) -> Path:
    p = t / "grey.png"
    cv2.imwrite(str(p), np.full((H, W), 128, np.uint8))
    return p


@pytest.mark.parametrize("name,argv,code,says", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_input_is_refused_with_its_status(tmp_path, capsys, name, argv, code, says) -> None:
    args = argv(tmp_path)
    if not any(a in args for a in ("--image-size", "--checkerboard")) and name != "no size":
        args += ["--image-size", f"{W}x{H}"]
    got, out, err = calibrate(capsys, *args)
    assert got == code, err
    assert says in err and err.startswith("crack-edge calibrate: ")
    assert "[ground]" not in out


def test_a_config_that_is_not_toml_is_left_alone(tmp_path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("vehicle_id = \n[oops\n")
    code, _, err = calibrate(capsys, *point_args(image_of(ROAD[:4]), ROAD[:4]), "--image-size", f"{W}x{H}",
                             "--write", str(cfg))
    assert code == exits.CONFIG and "not valid TOML" in err
    assert cfg.read_text() == "vehicle_id = \n[oops\n"


def test_the_real_command_exit_status() -> None:
    """As a shell or systemd sees it: a distinct status and one line, no traceback."""
    p = subprocess.run([sys.executable, "-m", "edge.cli", "calibrate", "--point", "0,0,0,1", "--point", "1,1,1,2",
                        "--point", "2,2,2,3", "--point", "3,3,3,4", "--image-size", "640x480"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == exits.DATAERR
    assert p.stderr.strip().count("\n") == 0 and "lie on one line" in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------- the daemon and the report


@pytest.mark.timeout(120)
def test_calibrated_daemon_run_feeds_the_report(student_onnx, small_video, tmp_path, endpoint, edge_daemon) -> None:
    from edge import wire
    from edge.measure import measure_mask
    from edge.recording import read_records
    from viewer.report.cli import run_report

    cfg = tmp_path / "edge.toml"
    Hs = square_on(5.0, (96, 64), y_near=2.0)          # the 96x64 clip, 5 mm per pixel, 2 m ahead
    cfg.write_text("[position]\nkind = \"fixed\"\nlat = 52.0\nlon = 4.3\nheading_deg = 90.0\n\n"
                   f"[ground]\nhomography = {Hs.tolist()}\nimage_size = [96, 64]\n")
    rec = tmp_path / "rec"
    d = edge_daemon("--config", str(cfg), "--model", str(student_onnx), "--backend", "onnxruntime", "--threads", "1",
                    "--publish", endpoint, "--inference-size", "64x64",
                    "--source", str(small_video), "--no-loop", "--max-frames", "6", "--record", str(rec),
                    "--vehicle-id", "van-9")
    assert d.wait(90) == 0, d.log()
    ground = Ground.from_config(load_config(cfg).ground)
    masks = [wire.decode(r.frames) for r in read_records(rec) if r.frames[0].startswith(b"mask/")]
    assert len(masks) == 6
    for m in masks:
        h = m.header
        assert h["calibrated"] is True and len(h["ground"]["footprint_m"]) == 4
        # The 64x64 mask is scaled to the 96x64 calibration: the footprint is the clip's 0.48 x 0.32 m.
        assert h["ground"]["surveyed_area_m2"] == pytest.approx(0.48 * 0.32, rel=1e-6)
        again = measure_mask(m.mask, 5, ground)
        assert h["ground"] == again.ground and h["cracks"] == again.cracks
        assert h["crack_count"] == again.pixels.count
    out = tmp_path / "report"
    assert run_report([str(rec)], str(out)) == exits.OK
    rows = (out / "segments.csv").read_text().splitlines()
    header = rows[0].split(",")
    surveyed = sum(float(r.split(",")[header.index("surveyed_area_m2")]) for r in rows[1:])
    assert surveyed > 0


def test_check_says_whether_the_source_is_measured_in_mm(student_onnx, small_video, tmp_path) -> None:
    def check(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge.cli", "check", "--model", str(student_onnx), "--backend",
                               "onnxruntime", "--source", str(small_video), *extra], cwd=REPO, capture_output=True,
                              text=True, timeout=120)

    p = check()
    assert p.returncode == exits.OK, p.stderr
    assert "ground: not calibrated" in p.stdout
    for size, fits in (("96, 64", True), ("640, 640", False)):   # the clip is 96x64
        cfg = tmp_path / f"{fits}.toml"
        cfg.write_text(f"[ground]\nhomography = {square_on(5.0, (96, 64), y_near=2.0).tolist()}\n"
                       f"image_size = [{size}]\n")
        p = check("--config", str(cfg))
        assert p.returncode == exits.OK, p.stderr
        assert "ground ok: calibrated at" in p.stdout
        assert ("measured in pixels only" in p.stdout) is not fits, p.stdout


def test_daemon_refuses_a_calibration_behind_the_camera(tmp_path) -> None:
    """A hand-edited [ground] whose horizon crosses the image: crack-edge check (as run) stops with 78."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[ground]\nhomography = [[0.001, 0, 0], [0, 0.001, 0], [0.01, 0, -3.2]]\nimage_size = [640, 480]\n")
    p = subprocess.run([sys.executable, "-m", "edge.cli", "check", "--config", str(cfg)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == exits.CONFIG, p.stderr
    assert "ground" in p.stderr and "behind the camera" in p.stderr and "Traceback" not in p.stderr


def test_preview_is_metric_from_above(tmp_path, capsys) -> None:
    """The bird's-eye preview of the board's frame shows square squares of the right size."""
    from edge.calibrate import birds_eye, checkerboard_points, solve

    gray = render_checkerboard(CAMERA, (-0.6, 2.6), 0.15, (8, 6))
    img, road = checkerboard_points(gray, (7, 5), 0.15, (-0.45, 2.75))
    cal = solve(img, road, (W, H), max_range_m=6.0)
    view, s = birds_eye(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), cal, grid=False)
    found, corners = cv2.findChessboardCorners(cv2.cvtColor(view, cv2.COLOR_BGR2GRAY), (7, 5))
    assert found
    c = corners.reshape(5, 7, 2)
    along = np.hypot(*np.diff(c, axis=1).reshape(-1, 2).T) * s    # metres between neighbours in a row
    across = np.hypot(*np.diff(c, axis=0).reshape(-1, 2).T) * s
    assert along.mean() == pytest.approx(0.15, rel=0.03) and across.mean() == pytest.approx(0.15, rel=0.03)
    shot = tmp_path / "board.png"
    cv2.imwrite(str(shot), gray)
    code, _, err = calibrate(capsys, "--checkerboard", str(shot), "--pattern", "7x5", "--square-mm", "150",
                             "--board-origin=-0.45,2.75", "--preview", str(tmp_path / "top.png"))
    assert code == exits.OK, err
    assert cv2.imread(str(tmp_path / "top.png")) is not None and "preview:" in err
