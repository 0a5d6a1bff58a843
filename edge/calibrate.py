"""``crack-edge calibrate``: the ground-plane homography, from points on the road or a checkerboard.

Points: four or more pixels of a camera frame whose road positions are known (tape-measured
marks, in metres from the vehicle's reference point, ``x`` right and ``y`` forward unless
``--forward`` says otherwise).  Checkerboard: a board laid flat on the road, its rows across
the lane; OpenCV finds its inner corners and ``--board-origin`` places its nearest-left corner.
The homography is the normalised DLT (Hartley), refused when the points cannot determine one
(fewer than 4, collinear, coincident), when a point maps behind the camera, when the fit misses
a point by more than ``--max-error-m``, or when the image's bottom lies at or above the horizon.
The result is printed as a ``[ground]`` section, or written into a config (``--write``), the
rest of that file kept as it is.

Exit statuses (common.exits): OK; USAGE for a missing or malformed flag; NOINPUT for a points
file or image that does not exist; DATAERR for points or a picture that give no usable
homography (the message names the point or the reason); CONFIG for a config file that is not
TOML or would not be after the edit; CANTCREAT when the config cannot be written.
"""
from __future__ import annotations

import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import exits

MAX_POINTS = 10_000
MAX_POINTS_FILE_BYTES = 1 << 20
MIN_POINTS = 4
SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


class CalibrationError(Exception):
    """Why no calibration was made; ``code`` is the exit status, ``reason`` a short stable tag."""

    def __init__(self, message: str, code: int = exits.DATAERR, reason: str = "bad_points") -> None:
        super().__init__(message)
        self.code, self.reason = code, reason


@dataclass
class Calibration:
    homography: np.ndarray       # as given to the config: calibration px -> the points' road axes
    image_size: tuple[int, int]
    forward: str
    points: int
    rms_m: float
    worst_m: float
    footprint_m: list[list[float]]
    mm_per_px_near: float        # road size of one pixel at the image's bottom centre


# ---------------------------------------------------------------- the homography


def _normaliser(p: np.ndarray) -> np.ndarray:
    """Hartley's similarity: centroid to 0, mean distance sqrt(2)."""
    c = p.mean(axis=0)
    d = np.sqrt(((p - c) ** 2).sum(axis=1)).mean()
    s = math.sqrt(2) / d if d > 0 else 1.0
    return np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1.0]])


def _collinear(p: np.ndarray) -> bool:
    sv = np.linalg.svd(p - p.mean(axis=0), compute_uv=False)
    return bool(sv[0] == 0 or sv[1] / sv[0] < 1e-6)


def _to_road(H: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.c_[pts, np.ones(len(pts))] @ H.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return X[:, :2] / X[:, 2:], X[:, 2]


def dlt(img: np.ndarray, road: np.ndarray) -> np.ndarray:
    """Homography image -> road by the normalised DLT; CalibrationError when the points do not fix one."""
    n = len(img)
    if n < MIN_POINTS:
        raise CalibrationError(f"need at least {MIN_POINTS} points (pixel and road position), got {n}",
                               reason="too_few_points")
    if not (np.isfinite(img).all() and np.isfinite(road).all()):
        raise CalibrationError("a point holds a number that is not finite", reason="bad_points")
    for name, p in (("image", img), ("road", road)):
        if _collinear(p):
            raise CalibrationError(f"the {name} points lie on one line (or coincide): a homography needs "
                                   "4 points with no 3 on a line", reason="collinear")
    Ti, Tr = _normaliser(img), _normaliser(road)
    a = np.c_[img, np.ones(n)] @ Ti.T
    b = np.c_[road, np.ones(n)] @ Tr.T
    A = np.zeros((2 * n, 9))
    A[0::2, 0:3] = a
    A[0::2, 6:9] = -b[:, :1] * a
    A[1::2, 3:6] = a
    A[1::2, 6:9] = -b[:, 1:2] * a
    _, sv, vt = np.linalg.svd(A)
    if sv[7] < 1e-9 * sv[0]:   # rank 8 (a 1-D null space) or the points leave the plane free
        raise CalibrationError("the points do not determine a homography: three of the points lie on one line "
                               "(or some coincide); use 4 with no 3 on a line, in the image and on the road",
                               reason="collinear")
    Hn = vt[-1].reshape(3, 3)
    hs = np.linalg.svd(Hn, compute_uv=False)
    if hs[-1] < 1e-6 * hs[0]:
        raise CalibrationError("three of the points lie on one line (in the image or on the road): the "
                               "homography would be singular; use 4 points with no 3 on a line", reason="collinear")
    H = np.linalg.inv(Tr) @ Hn @ Ti
    return H / np.abs(H).max()


def solve(img: np.ndarray, road: np.ndarray, image_size: tuple[int, int], forward: str = "+y",
          max_range_m: float = 20.0, max_error_m: float = 0.05) -> Calibration:
    """Fit, check and describe a calibration; CalibrationError naming what is wrong."""
    from edge.measure import Ground, GroundError, apply, normalise

    img = np.asarray(img, np.float64).reshape(-1, 2)
    road = np.asarray(road, np.float64).reshape(-1, 2)
    W, Hh = image_size
    outside = [i for i, (u, v) in enumerate(img) if not (-0.5 <= u <= W - 0.5 and -0.5 <= v <= Hh - 0.5)]
    if outside:
        u, v = img[outside[0]]
        raise CalibrationError(f"point {outside[0] + 1} ({u:g}, {v:g}) lies outside the {W}x{Hh} image",
                               reason="outside_image")
    H = dlt(img, road)
    try:
        H = normalise(H, image_size)
    except GroundError as e:
        raise CalibrationError(str(e), reason=e.reason) from None
    mapped, w = _to_road(H, img)
    behind = np.flatnonzero(w <= 0)
    if len(behind):
        k = behind[0]
        raise CalibrationError(f"point {k + 1} ({img[k][0]:g}, {img[k][1]:g}) maps behind the camera (at or above "
                               "the horizon of the fitted plane): check its road position and the order of the points",
                               reason="behind_camera")
    err = np.sqrt(((mapped - road) ** 2).sum(axis=1))
    rms, worst = float(np.sqrt((err ** 2).mean())), int(np.argmax(err))
    if err[worst] > max_error_m:
        raise CalibrationError(f"the fitted plane misses point {worst + 1} ({img[worst][0]:g}, {img[worst][1]:g}) "
                               f"by {err[worst]:.3f} m (RMS {rms:.3f} m, allowed {max_error_m:g} m): a point is "
                               "mistyped, or the road is not flat there", reason="poor_fit")
    try:
        g = Ground.build(H, image_size, forward, max_range_m)
    except GroundError as e:
        raise CalibrationError(str(e), reason=e.reason) from None
    view = g.view(W, Hh)
    p = np.array([[(W - 1) / 2, Hh - 1.5], [(W - 1) / 2 + 1, Hh - 1.5], [(W - 1) / 2, Hh - 0.5]])
    r, _ = apply(g.H, p)
    a, b = r[1] - r[0], r[2] - r[0]
    mm = 1000 * math.sqrt(abs(a[0] * b[1] - a[1] * b[0]))
    return Calibration(H, (W, Hh), forward, len(img), rms, float(err[worst]), view.footprint_m, mm)


# ---------------------------------------------------------------- inputs


def parse_size(text: str, what: str = "--image-size") -> tuple[int, int]:
    m = SIZE_RE.match(text or "")
    if not m or not all(0 < int(g) <= 8192 for g in m.groups()):
        raise CalibrationError(f"{what} {text!r}: expected WxH, e.g. 1280x720 (each 1..8192)", exits.USAGE, "usage")
    return int(m.group(1)), int(m.group(2))


def parse_numbers(text: str, n: int, what: str) -> list[float]:
    parts = [p for p in re.split(r"[,\s;]+", text.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise CalibrationError(f"{what} {text!r}: expected {n} numbers", exits.USAGE, "usage")
    return values


def read_points(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A points file: one ``u v x y`` per line (commas or spaces; ``#`` comments; a header line of
    words is skipped)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_POINTS_FILE_BYTES:
            raise CalibrationError(f"{p}: {size} bytes is not a points file (at most {MAX_POINTS_FILE_BYTES})")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibrationError(f"{p}: no such points file", exits.NOINPUT, "no_input") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{p}: cannot read it: {e}", exits.NOINPUT if isinstance(e, OSError) else exits.DATAERR,
                               "unreadable") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [x for x in re.split(r"[,\s;]+", line) if x]
        try:
            values = [float(x) for x in parts]
        except ValueError:
            if not rows and not any(ch.isdigit() for ch in line):
                continue  # a header such as "u,v,x,y"
            raise CalibrationError(f"{p}:{lineno}: {line[:60]!r} is not 4 numbers (u v x y)") from None
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise CalibrationError(f"{p}:{lineno}: expected 4 numbers u v x y, got {len(values)}")
        rows.append(values)
        if len(rows) > MAX_POINTS:
            raise CalibrationError(f"{p}: more than {MAX_POINTS} points")
    arr = np.array(rows, np.float64).reshape(-1, 4)
    return arr[:, :2], arr[:, 2:]


def read_image(path: str, colour: bool = False) -> np.ndarray:
    import cv2

    from edge import images

    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"{p}: no such image", exits.NOINPUT, "no_input")
    data = p.read_bytes()
    if data[:2] == b"\xff\xd8":
        try:  # the JPEG's size is read before decoding: a hostile file cannot make us allocate
            w, h = images.jpeg_size(data)
            if not (0 < w <= 8192 and 0 < h <= 8192):
                raise CalibrationError(f"{p}: a {w}x{h} image is beyond 8192 px")
        except images.ImageError as e:
            raise CalibrationError(f"{p}: not a readable JPEG: {e}") from None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise CalibrationError(f"{p}: not an image OpenCV can read", reason="unreadable")
    if max(img.shape[:2]) > 8192:
        raise CalibrationError(f"{p}: a {img.shape[1]}x{img.shape[0]} image is beyond 8192 px")
    return img


def checkerboard_points(gray: np.ndarray, pattern: tuple[int, int], square_m: float,
                        origin: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The board's inner corners (image px) and their road positions.

    The board lies flat with its rows across the lane or along it; whichever of its two directions
    runs more across the image is lateral (left to right), the other forward (bottom of the image
    to top: nearer to farther).  ``origin`` is the road position of the nearest-left inner corner.
    """
    import cv2

    cols, rows = pattern
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
    found, corners = cv2.findChessboardCorners(gray, (cols, rows), flags=flags)
    if not found:
        raise CalibrationError(f"no {cols}x{rows} checkerboard (inner corners) found in the image: check --pattern "
                               "(inner corners, not squares), lighting and that the whole board is in view",
                               reason="no_checkerboard")
    corners = cv2.cornerSubPix(gray, corners, (5, 5), (-1, -1),
                               (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 0.01))
    c = corners.reshape(rows, cols, 2).astype(np.float64)
    di = (c[:, -1] - c[:, 0]).mean(axis=0)     # along a row of the pattern
    dj = (c[-1, :] - c[0, :]).mean(axis=0)     # across the rows
    jj, ii = np.mgrid[0:rows, 0:cols]
    if abs(di[0]) >= abs(dj[0]):               # rows run across the image
        lat = ii if di[0] > 0 else cols - 1 - ii
        fwd = jj if dj[1] < 0 else rows - 1 - jj
    else:
        lat = jj if dj[0] > 0 else rows - 1 - jj
        fwd = ii if di[1] < 0 else cols - 1 - ii
    road = np.stack([origin[0] + lat * square_m, origin[1] + fwd * square_m], axis=-1)
    return c.reshape(-1, 2), road.reshape(-1, 2).astype(np.float64)


# ---------------------------------------------------------------- a picture to check it by


def birds_eye(frame: np.ndarray, cal: Calibration, longest_px: int = 1000, grid: bool = True) -> tuple[np.ndarray, float]:
    """The frame's footprint seen from above (forward up, right to the right) with a metric grid
    (10 cm, 50 cm or 1 m apart, whichever is at least 25 px; metre lines brighter) and the footprint
    in red: straight kerbs, square tiles and marks on the grid say the calibration is right.
    Returns the picture and its metres per pixel."""
    import cv2

    from edge.measure import Ground

    g = Ground.build(cal.homography, cal.image_size, cal.forward)
    fp = np.array(g.view(*cal.image_size).footprint_m)
    x0, y0 = fp.min(axis=0)
    x1, y1 = fp.max(axis=0)
    s = max(x1 - x0, y1 - y0) / longest_px
    w, h = max(1, int(math.ceil((x1 - x0) / s))), max(1, int(math.ceil((y1 - y0) / s)))
    to_road = np.array([[s, 0, x0 + s / 2], [0, -s, y1 - s / 2], [0, 0, 1.0]])
    if frame.shape[1::-1] != tuple(cal.image_size):
        frame = cv2.resize(frame, cal.image_size, interpolation=cv2.INTER_AREA)
    view = cv2.warpPerspective(frame, np.linalg.inv(g.H) @ to_road, (w, h),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    if view.ndim == 2:
        view = cv2.cvtColor(view, cv2.COLOR_GRAY2BGR)
    if grid:
        step = next((d for d in (0.1, 0.5, 1.0, 5.0) if d / s >= 25), 10.0)
        for k in range(int(math.floor(x0 / step)), int(math.ceil(x1 / step)) + 1):
            u = int(round((k * step - x0) / s))
            metre = abs(k * step - round(k * step)) < 1e-9
            cv2.line(view, (u, 0), (u, h - 1), (0, 255, 255) if metre else (0, 160, 0), 1)
        for k in range(int(math.floor(y0 / step)), int(math.ceil(y1 / step)) + 1):
            v = int(round((y1 - k * step) / s))
            metre = abs(k * step - round(k * step)) < 1e-9
            cv2.line(view, (0, v), (w - 1, v), (0, 255, 255) if metre else (0, 160, 0), 1)
    outline = np.round((fp - (x0, y1)) / (s, -s)).astype(np.int32)
    cv2.polylines(view, [outline], True, (0, 0, 255), 2)
    return view, s


# ---------------------------------------------------------------- the config


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        text = f"{v:.12g}"
        return text if any(ch in text for ch in ".en") else text + ".0"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def section_text(cal: Calibration, keep: dict[str, Any] | None = None) -> str:
    """The ``[ground]`` section; ``keep``: other keys of a section being replaced (max_range_m...)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    H = np.where(np.abs(cal.homography) < 1e-15 * np.abs(cal.homography).max(), 0.0, cal.homography)
    rows = ",\n".join("  " + _toml_value([float(x) for x in r]) for r in H)
    lines = ["[ground]",
             f"# crack-edge calibrate {stamp}: {cal.points} points, RMS {cal.rms_m:.4f} m, worst {cal.worst_m:.4f} m;",
             f"# {cal.mm_per_px_near:.2f} mm per pixel at the bottom centre; road x right, y forward (m)",
             f"homography = [\n{rows},\n]",
             f"image_size = {_toml_value(list(cal.image_size))}",
             f"forward = {_toml_value(cal.forward)}"]
    for k, v in (keep or {}).items():
        if k not in ("homography", "image_size", "forward"):
            lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


# A table header ([name] or [[name]]), not a row of a multi-line array such as "  [0.001, 0, 1.2],".
_HEADER = re.compile(r"^\s*\[\[?\s*[A-Za-z_\"']")
_GROUND = re.compile(r"^\s*\[\s*ground\s*\]\s*(#.*)?$")


def replace_section(text: str, section: str) -> str:
    """``text`` without its ``[ground]`` table, ``section`` appended."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if _GROUND.match(line):
            skipping = True
            continue
        if skipping and _HEADER.match(line):
            skipping = False
        if not skipping:
            out.append(line)
    body = "".join(out).rstrip("\n")
    return (body + "\n\n" if body else "") + section


def write_config(path: str, cal: Calibration) -> str:
    """Put the calibration into the config at ``path`` (created if absent), atomically."""
    import tomllib

    from common import settings
    from edge.config import GroundConfig

    p = Path(path)
    old, keep = "", {}
    if p.exists():
        try:
            old = p.read_text(encoding="utf-8")
            data = tomllib.loads(old)
        except (OSError, UnicodeDecodeError) as e:
            raise CalibrationError(f"{p}: cannot read the config: {e}", exits.CONFIG, "bad_config") from None
        except tomllib.TOMLDecodeError as e:
            raise CalibrationError(f"{p}: not valid TOML, left unchanged: {e}", exits.CONFIG, "bad_config") from None
        keep = data.get("ground") if isinstance(data.get("ground"), dict) else {}
    section = section_text(cal, keep)
    new = replace_section(old, section)
    try:
        ground = tomllib.loads(new).get("ground", {})
        settings.check_table(GroundConfig, ground)
    except tomllib.TOMLDecodeError as e:
        raise CalibrationError(f"{p}: the edit would not be valid TOML ({e}); left unchanged: put the [ground] "
                               "section printed below in by hand", exits.CONFIG, "bad_config") from None
    except ValueError as e:  # check_table names each bad key
        raise CalibrationError(f"{p}: ground: {e}; left unchanged", exits.CONFIG,
                               "bad_config") from None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
            fh.flush()
            os.fsync(fh.fileno())
        if p.exists():
            os.chmod(tmp, p.stat().st_mode & 0o7777)
        os.replace(tmp, p)
    except OSError as e:
        raise CalibrationError(f"{p}: cannot write the config: {e}", exits.CANTCREAT, "cantcreat") from None
    return section


# ---------------------------------------------------------------- the command


def run(args: Any) -> int:
    """``crack-edge calibrate``: prints the section (and writes it with ``--write``)."""
    try:
        cal = _calibrate(args)
        section = write_config(args.write, cal) if args.write else section_text(cal)
        if args.preview:
            _preview(args, cal)
    except CalibrationError as e:
        print(f"crack-edge calibrate: {e}", file=sys.stderr)
        return e.code
    sys.stdout.write(section)
    fp = cal.footprint_m
    ys, xs = [p[1] for p in fp], [p[0] for p in fp]
    print(f"calibrated: {cal.points} points, RMS {cal.rms_m:.4f} m; footprint y {min(ys):.2f}..{max(ys):.2f} m, "
          f"x {min(xs):.2f}..{max(xs):.2f} m; {cal.mm_per_px_near:.2f} mm/px near"
          + (f"; written to {args.write}" if args.write else ""), file=sys.stderr)
    return exits.OK


def _preview(args: Any, cal: Calibration) -> None:
    import cv2

    frame_path = args.checkerboard or args.image
    if not frame_path:
        raise CalibrationError("--preview needs a frame: --image FRAME (or --checkerboard)", exits.USAGE, "usage")
    view, s = birds_eye(read_image(frame_path, colour=True), cal)
    try:
        ok = cv2.imwrite(str(args.preview), view)
    except cv2.error as e:
        raise CalibrationError(f"{args.preview}: cannot write the preview: {e}", exits.CANTCREAT, "cantcreat") from None
    if not ok:
        raise CalibrationError(f"{args.preview}: cannot write the preview", exits.CANTCREAT, "cantcreat")
    print(f"preview: {args.preview} ({view.shape[1]}x{view.shape[0]}, {1000 * s:.1f} mm per pixel, "
          "forward up)", file=sys.stderr)


def _calibrate(args: Any) -> Calibration:
    forward = args.forward
    if args.checkerboard:
        if not args.pattern or args.square_mm is None or not args.board_origin:
            raise CalibrationError("--checkerboard needs --pattern COLSxROWS, --square-mm and --board-origin X,Y",
                                   exits.USAGE, "usage")
        pattern = parse_size(args.pattern, "--pattern")
        if min(pattern) < 2 or args.square_mm <= 0 or not math.isfinite(args.square_mm):
            raise CalibrationError("--pattern needs at least 2x2 inner corners and --square-mm a positive size",
                                   exits.USAGE, "usage")
        origin = parse_numbers(args.board_origin, 2, "--board-origin")
        gray = read_image(args.checkerboard)
        img, road = checkerboard_points(gray, pattern, args.square_mm / 1000.0, (origin[0], origin[1]))
        size = (gray.shape[1], gray.shape[0])
        if forward != "+y":
            raise CalibrationError("--forward applies to --points; a checkerboard is placed in x right, y forward",
                                   exits.USAGE, "usage")
    else:
        if args.image_size:
            size = parse_size(args.image_size)
        elif args.image:
            gray = read_image(args.image)
            size = (gray.shape[1], gray.shape[0])
        else:
            raise CalibrationError("give the image size the points were read on: --image-size WxH or --image FRAME",
                                   exits.USAGE, "usage")
        if args.points:
            img, road = read_points(args.points)
        else:
            rows = np.array([parse_numbers(t, 4, "--point") for t in args.point]).reshape(-1, 4)
            img, road = rows[:, :2], rows[:, 2:]
    return solve(img, road, size, forward, args.max_range_m, args.max_error_m)
