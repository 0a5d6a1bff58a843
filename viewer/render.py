"""Drawing, and nothing else: vehicle views in, one BGR image out (pure functions, no windows).

Each vehicle gets a tile: a text band on top (figures: rates and latency; the cracks in metres and
millimetres on the road when the daemon is calibrated, else in mask pixels; the position fix,
speed and heading), then its camera frame with the mask
painted over it in :data:`OVERLAY_BGR`, or the mask alone on black when the daemon sends no
frame.  A stale vehicle's tile is dimmed and its band turns :data:`STALE_BAND_BGR`.  Tiles are
laid out on a grid; a footer carries fleet-wide figures.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from edge import images
from edge.wire import MAX_SIDE
from viewer.state import VehicleView

OVERLAY_BGR = (0, 0, 255)          # crack pixels: red
OVERLAY_ALPHA = 0.55
BAND_BGR = (40, 40, 40)            # text band of a live vehicle
STALE_BAND_BGR = (0, 140, 255)     # text band of a stale vehicle: orange
FOOTER_BGR = (20, 20, 20)
TEXT_BGR = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX
LINE_H = 24
BAND_LINES = 4
BAND_H = LINE_H * BAND_LINES + 8
FOOTER_H = LINE_H + 6
GAP = 4
MAX_TILES = 16        # tiles drawn at most; the footer counts the others (a bounded canvas)
MAX_TILE_ASPECT = 2.0  # a tile's picture is at most this many times taller than wide, whatever frame_* say


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``frame`` (BGR) with the pixels where ``mask`` > 0 blended toward OVERLAY_BGR."""
    if mask.shape[:2] != frame.shape[:2]:
        mask = cv2.resize(mask, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
    out = frame.copy()
    hit = mask > 0
    out[hit] = (frame[hit] * (1.0 - alpha) + np.array(OVERLAY_BGR, np.float32) * alpha).astype(np.uint8)
    return out


def mask_alone(mask: np.ndarray) -> np.ndarray:
    out = np.zeros((*mask.shape[:2], 3), np.uint8)
    out[mask > 0] = OVERLAY_BGR
    return out


def decode_jpeg(data: bytes | None, size: tuple[int, int] | None = None) -> np.ndarray | None:
    """The frame JPEG, or None; its declared size must be ``size`` (W, H), and at most MAX_SIDE."""
    if not data:
        return None
    try:
        w, h = size or images.jpeg_size(data)
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            return None
        return images.decode_jpeg(data, w, h)
    except images.ImageError:
        return None


def vehicle_image(view: VehicleView) -> tuple[np.ndarray | None, str]:
    """The picture of one vehicle and a note on what it is (``frame``, ``mask only``...)."""
    size = None if view.mask is None else (view.mask.shape[1], view.mask.shape[0])
    frame = decode_jpeg(view.frame_jpeg, size)
    if view.mask is None:
        return frame, "no mask yet" if frame is None else "frame"
    if frame is not None:
        return overlay(frame, view.mask), "frame+mask"
    note = "mask only (bad frame JPEG)" if view.frame_jpeg else "mask only"
    return mask_alone(view.mask), note


def _num(value: object) -> float | None:
    """A header value as a finite number, or None: what a daemon sends is drawn, never trusted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value: object, spec: str, unit: str = "") -> str:
    v = _num(value)
    return "-" if v is None else f"{v:{spec}}{unit}"


def crack_line(view: VehicleView) -> str:
    """The crack figures: on the road (m, mm, m2) when the daemon is calibrated, else in mask pixels."""
    ratio = _num(view.crack_ratio)
    head = f"crack {_fmt(None if ratio is None else ratio * 100, '.2f', '%')}  n {_fmt(view.crack_count, '.0f')}"
    g = view.ground
    if g is not None:
        return (f"{head}  len {_fmt(g.get('crack_length_m'), '.2f', ' m')}"
                f"  width {_fmt(g.get('crack_max_width_mm'), '.1f', ' mm')}"
                f"  area {_fmt(g.get('crack_area_m2'), '.4f', ' m2')}")
    return (f"{head}  len {_fmt(view.crack_length_px, '.0f', 'px')}"
            f"  width {_fmt(view.crack_max_width_px, '.1f', 'px')}  (not calibrated)")


def position_line(view: VehicleView) -> str:
    """Where the vehicle was at the last mask: the fix, its quality and age, speed and heading."""
    p = view.position
    if p is None:
        return "position: none sent"
    if p.get("fix") is not True:
        reason = p.get("reason")
        return f"no fix ({reason[:24] if isinstance(reason, str) and reason else 'no reason given'})"
    quality = p.get("quality")
    q = quality[:12] if isinstance(quality, str) else "?"
    # The source's own speed and heading; else (a GPX log has none) those between the last two fixes, marked ~.
    speed, heading, mark = _num(p.get("speed_mps")), _num(p.get("heading_deg")), ""
    if speed is None and view.track_speed_mps is not None:
        speed, mark = view.track_speed_mps, "~"
    if heading is None and view.track_heading_deg is not None:
        heading = view.track_heading_deg
    return (f"fix {_fmt(p.get('lat'), '.6f')} {_fmt(p.get('lon'), '.6f')} {q}  age {_fmt(p.get('age_s'), '.1f', 's')}"
            f"  speed {mark}{_fmt(speed, '.1f', ' m/s')} ({_fmt(None if speed is None else speed * 3.6, '.0f', ' km/h')})"
            f"  hdg {mark}{_fmt(heading, '.0f')}")


def text_lines(view: VehicleView, note: str = "") -> list[str]:
    state = f"STALE {view.silent_s:.0f}s" if view.stale else "live"
    return [
        f"{view.vehicle_id}  {state}  seq {view.seq}  run {view.run_id[:8]}  {note}",
        f"fps {view.fps:.1f}  latency pub {_fmt(view.latency_publish_ms, '.0f', 'ms')}"
        f"  cap {_fmt(view.latency_capture_ms, '.0f', 'ms')}  infer {_fmt(view.infer_ms, '.0f', 'ms')}"
        f"  drops {view.drops}" + (f" ({view.recovered} back)" if view.recovered else "")
        + f"  restarts {view.restarts}",
        crack_line(view),
        position_line(view),
    ]


def _put_lines(img: np.ndarray, lines: Sequence[str], top: int, width: int) -> None:
    scale = 0.6
    widest = max(cv2.getTextSize(t, FONT, scale, 1)[0][0] for t in lines)
    if widest > width - 12:
        scale *= (width - 12) / widest
    for i, text in enumerate(lines):
        y = top + (i + 1) * LINE_H - 6
        cv2.putText(img, text, (6, y), FONT, scale, TEXT_BGR, 1, cv2.LINE_AA)


def render_tile(view: VehicleView, width: int) -> np.ndarray:
    """One vehicle: text band, then its picture scaled to ``width``."""
    pic, note = vehicle_image(view)
    if pic is None:
        pic = np.zeros((width * 3 // 4, width, 3), np.uint8)
    # Show the road in the camera's proportions, not the model's (a 480x320 frame inferred at 448x448).
    fw, fh = view.frame_size or (pic.shape[1], pic.shape[0])
    h = max(1, min(round(fh * width / fw), round(width * MAX_TILE_ASPECT)))
    interp = cv2.INTER_NEAREST if view.frame_jpeg is None else cv2.INTER_LINEAR
    pic = cv2.resize(pic, (width, h), interpolation=interp)
    if view.stale:
        pic = (pic * 0.35).astype(np.uint8)
        cv2.putText(pic, "STALE", (width // 2 - 70, h // 2 + 15), FONT, 1.4, STALE_BAND_BGR, 3, cv2.LINE_AA)
    tile = np.empty((BAND_H + h, width, 3), np.uint8)
    tile[:BAND_H] = STALE_BAND_BGR if view.stale else BAND_BGR
    tile[BAND_H:] = pic
    _put_lines(tile, text_lines(view, note), 2, width)
    return tile


def grid_columns(n: int, columns: int | None = None) -> int:
    return max(1, min(n, columns or math.ceil(math.sqrt(n))))


def render_fleet(views: Sequence[VehicleView], tile_width: int = 640, columns: int | None = None,
                 footer: str = "") -> np.ndarray:
    """All vehicles on a grid (sorted as given) with a footer line; one vehicle is one tile."""
    if not views:
        return render_waiting(footer or "waiting for vehicles", tile_width)
    if len(views) > MAX_TILES:
        footer = f"{footer}  (+{len(views) - MAX_TILES} vehicles not shown)"
        views = views[:MAX_TILES]
    tiles = [render_tile(v, tile_width) for v in views]
    cols = grid_columns(len(tiles), columns)
    rows = math.ceil(len(tiles) / cols)
    row_h = [max(t.shape[0] for t in tiles[r * cols:(r + 1) * cols]) for r in range(rows)]
    width = cols * tile_width + (cols - 1) * GAP
    height = sum(row_h) + (rows - 1) * GAP + FOOTER_H
    canvas = np.zeros((height, width, 3), np.uint8)
    y = 0
    for r in range(rows):
        for c, tile in enumerate(tiles[r * cols:(r + 1) * cols]):
            x = c * (tile_width + GAP)
            canvas[y:y + tile.shape[0], x:x + tile_width] = tile
        y += row_h[r] + GAP
    canvas[height - FOOTER_H:] = FOOTER_BGR
    if footer:
        _put_lines(canvas, [footer], height - FOOTER_H, width)
    return canvas


def render_waiting(text: str, width: int = 640) -> np.ndarray:
    img = np.full((width * 3 // 4, width, 3), FOOTER_BGR, np.uint8)
    _put_lines(img, [text], img.shape[0] // 2 - LINE_H, width)
    return img
