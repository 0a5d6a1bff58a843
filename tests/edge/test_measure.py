"""edge.measure: cracks drawn on a known road plane, measured back through a known homography.

A fronto-parallel homography (the road seen square-on) gives exact millimetres; a pinhole
camera tilted down at the road gives a perspective homography whose cracks are drawn on the
road and projected into the image, so their true length, width and area are known.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from edge import wire
from edge.measure import MAX_CRACKS, Ground, GroundError, measure_mask
from edge.processing import measure
from roadcam import H, W, pinhole, road_crack_mask, square_on


# ---------------------------------------------------------------- square-on: exact millimetres


@pytest.mark.parametrize("width_px", [1, 3, 5, 9])
def test_square_on_transverse_crack_in_mm(width_px: int) -> None:
    g = Ground.build(square_on(2.0), (W, H))
    mask = np.zeros((H, W), np.uint8)
    mask[200:200 + width_px, 100:400] = 255
    m = measure_mask(mask, 1, g)
    (c,) = m.cracks
    assert c["type"] == "transverse"
    assert c["max_width_mm"] == pytest.approx(2.0 * width_px, abs=1e-6)          # (2d - 1) px x 2 mm
    assert c["area_m2"] == pytest.approx(300 * width_px * 0.002 ** 2, rel=1e-9)  # every pixel 4 mm2
    # Thinning shortens each end by about half the width; links join pixel centres.
    assert 0.002 * (299 - width_px) <= c["length_m"] <= 0.002 * 299 + 1e-9
    cy = 1.0 + 0.002 * (H - 1 - (200 + (width_px - 1) / 2))
    assert c["centroid_m"] == pytest.approx([0.002 * (249.5 - (W - 1) / 2), cy], abs=1e-6)
    assert c["severity"] == "low" if 2.0 * width_px < 10 else "medium"
    assert m.ground["crack_area_m2"] == c["area_m2"] and m.ground["crack_length_m"] == c["length_m"]
    assert m.ground["surveyed_area_m2"] == pytest.approx(W * H * 0.002 ** 2, rel=1e-9)


def test_mask_at_inference_size_is_scaled_to_the_calibration() -> None:
    """The calibration is at 1280x960 (1 mm/px); masks at 640x480 see 2 mm per pixel."""
    g = Ground.build(square_on(1.0, (2 * W, 2 * H)), (2 * W, 2 * H))
    mask = np.zeros((H, W), np.uint8)
    mask[50:350, 300:305] = 255     # 5 px wide, 300 px long, vertical
    (c,) = measure_mask(mask, 1, g).cracks
    assert c["type"] == "longitudinal"
    assert c["max_width_mm"] == pytest.approx(10.0, abs=1e-6) and c["severity"] == "medium"
    assert c["area_m2"] == pytest.approx(1500 * 0.002 ** 2, rel=1e-9)
    fp = np.array(measure_mask(mask, 1, g).ground["footprint_m"])
    assert fp[:, 0].max() - fp[:, 0].min() == pytest.approx(1.28, abs=1e-6)
    assert fp[:, 1].max() - fp[:, 1].min() == pytest.approx(0.96, abs=1e-6)


def test_diagonal_crack_length_is_euclidean() -> None:
    g = Ground.build(square_on(1.0), (W, H))
    mask = np.zeros((H, W), np.uint8)
    cv2.line(mask, (100, 400), (400, 100), 255, 1)            # 300 * sqrt(2) px at 45 degrees
    (c,) = measure_mask(mask, 1, g).cracks
    assert c["length_m"] == pytest.approx(0.001 * 300 * math.sqrt(2), rel=0.01)
    # A pixel count would say 301 steps: the link length is what makes mm honest on diagonals.
    assert c["length_px"] == pytest.approx(301, abs=2)


# ---------------------------------------------------------------- perspective: a camera tilted at the road


@pytest.mark.parametrize("crack", [
    dict(x0=0.3, y0=3.0, x1=0.3, y1=5.0, width=0.02, type="longitudinal"),
    dict(x0=-0.8, y0=3.5, x1=0.6, y1=3.5, width=0.03, type="transverse"),
    dict(x0=-0.5, y0=2.5, x1=0.2, y1=3.4, width=0.015, type="longitudinal"),  # 38 degrees off forward
])
def test_perspective_crack_true_size(crack: dict) -> None:
    Hc = pinhole(f=1000.0)
    g = Ground.build(Hc, (W, H))
    mask = road_crack_mask(Hc, crack["x0"], crack["y0"], crack["x1"], crack["y1"], crack["width"])
    c = measure_mask(mask, 5, g).cracks[0]
    true_len = math.hypot(crack["x1"] - crack["x0"], crack["y1"] - crack["y0"])
    assert c["type"] == crack["type"]
    assert c["length_m"] == pytest.approx(true_len, rel=0.04)   # thinning shortens the ends a little
    assert c["area_m2"] == pytest.approx(true_len * crack["width"], rel=0.1)
    # Width: (2d - 1) reads whole pixels (an even width one less), so within about a pixel across it.
    assert abs(c["max_width_mm"] / 1000 - crack["width"]) <= 1.5 * max(_pixel_size(Hc, c["centroid_m"]))
    assert c["centroid_m"] == pytest.approx([(crack["x0"] + crack["x1"]) / 2, (crack["y0"] + crack["y1"]) / 2],
                                            abs=0.03)


def _pixel_size(Hc: np.ndarray, at_m: list[float]) -> tuple[float, float]:
    """(along u, along v) road metres of one pixel where the road point ``at_m`` is seen."""
    p = np.linalg.inv(Hc) @ (at_m[0], at_m[1], 1.0)
    u, v = p[:2] / p[2]
    def road(uu: float, vv: float) -> np.ndarray:
        q = Hc @ (uu, vv, 1.0)
        return q[:2] / q[2]
    return float(np.linalg.norm(road(u + 1, v) - road(u, v))), float(np.linalg.norm(road(u, v + 1) - road(u, v)))


def test_same_crack_near_and_far_reads_the_same_length() -> None:
    Hc = pinhole(f=1000.0)
    g = Ground.build(Hc, (W, H))
    near = measure_mask(road_crack_mask(Hc, -0.6, 2.8, 0.6, 2.8, 0.04), 5, g).cracks[0]
    far = measure_mask(road_crack_mask(Hc, -0.6, 6.0, 0.6, 6.0, 0.04), 5, g).cracks[0]
    assert far["length_px"] < 0.6 * near["length_px"]                 # fewer pixels far away ...
    assert far["length_m"] == pytest.approx(near["length_m"], rel=0.03)  # ... the same road length
    assert near["length_m"] == pytest.approx(1.2, rel=0.03)


def test_footprint_stops_at_the_range_and_the_horizon() -> None:
    """The pinhole camera's top rows see the sky: the footprint ends at max_range_m, nothing above is measured."""
    Hc = pinhole()
    g = Ground.build(Hc, (W, H), max_range_m=12.0)
    view = g.view(W, H)
    fp = np.array(view.footprint_m)
    assert fp[:, 1].max() == pytest.approx(12.0, abs=1e-6)
    bottom = Hc @ ((W - 1) / 2, H - 0.5, 1.0)
    assert fp[:, 1].min() == pytest.approx(bottom[1] / bottom[2], abs=1e-3)
    assert view.roi is not None and view.roi[0].sum() == 0 and view.roi[-1].all()
    sky = np.zeros((H, W), np.uint8)
    sky[5:12, 100:500] = 255                 # above the horizon of this camera
    m = measure_mask(sky, 5, g)
    assert m.cracks[0]["length_px"] > 0 and m.cracks[0]["length_m"] is None and m.cracks[0]["severity"] is None
    assert m.ground["crack_length_m"] == 0.0 and m.ground["surveyed_area_m2"] > 0


# ---------------------------------------------------------------- type and severity


def _one(mask: np.ndarray, g: Ground | None = None) -> dict:
    cracks = measure_mask(mask, 5, g).cracks
    assert len(cracks) == 1
    return cracks[0]


@pytest.mark.parametrize("angle_from_forward,expected", [(0, "longitudinal"), (30, "longitudinal"),
                                                         (60, "transverse"), (90, "transverse")])
def test_type_from_orientation_against_driving_direction(angle_from_forward: float, expected: str) -> None:
    g = Ground.build(square_on(1.0), (W, H))
    mask = np.zeros((H, W), np.uint8)
    a = math.radians(angle_from_forward)
    c, r = np.array([320, 240]), 180
    d = np.array([math.sin(a), -math.cos(a)])   # forward is image-up for this camera
    cv2.line(mask, tuple(int(v) for v in c - r * d), tuple(int(v) for v in c + r * d), 255, 3)
    assert _one(mask, g)["type"] == expected


def test_driving_direction_convention_turns_the_types() -> None:
    """A camera looking sideways: the image's horizontal is the road's forward (+x of its points)."""
    mask = np.zeros((H, W), np.uint8)
    mask[240:243, 100:500] = 255            # horizontal in the image
    s = 0.001
    sideways = np.array([[s, 0, 0], [0, s, 0], [0, 0, 1]])  # u -> +x, v -> +y of the points' axes
    assert _one(mask, Ground.build(sideways, (W, H), forward="+x"))["type"] == "longitudinal"
    assert _one(mask, Ground.build(sideways, (W, H), forward="+y"))["type"] == "transverse"


def test_alligator_mesh_against_a_branching_line() -> None:
    g = Ground.build(square_on(1.0), (W, H))
    mesh = np.zeros((H, W), np.uint8)
    for k in range(5):                          # a 4x4 block of cells, irregular like real cracking
        cv2.line(mesh, (150 + 50 * k, 100 + 7 * k), (160 + 50 * k, 320), 255, 3)
        cv2.line(mesh, (150, 110 + 50 * k), (360, 100 + 50 * k + 5 * (k % 2)), 255, 3)
    assert _one(mesh, g)["type"] == "alligator"
    y = np.zeros((H, W), np.uint8)              # a long crack with one side branch: not a mesh
    cv2.line(y, (320, 40), (320, 440), 255, 3)
    cv2.line(y, (320, 240), (420, 140), 255, 3)
    assert _one(y, g)["type"] == "longitudinal"


@pytest.mark.parametrize("width_px,mm_per_px,severity", [(3, 3.0, "low"), (5, 2.0, "medium"), (25, 3.0, "medium"),
                                                         (21, 4.0, "high")])
def test_severity_from_width_astm(width_px: int, mm_per_px: float, severity: str) -> None:
    g = Ground.build(square_on(mm_per_px), (W, H))
    mask = np.zeros((H, W), np.uint8)
    mask[100:400, 300:300 + width_px] = 255
    assert _one(mask, g)["severity"] == severity


def test_severity_thresholds_from_config() -> None:
    g = Ground.build(square_on(1.0), (W, H), severity_mm=(3.0, 6.0))
    mask = np.zeros((H, W), np.uint8)
    mask[100:400, 300:305] = 255   # 5 mm
    assert _one(mask, g)["severity"] == "medium"
    mask[100:400, 300:309] = 255   # 9 mm
    assert _one(mask, g)["severity"] == "high"


# ---------------------------------------------------------------- without calibration, limits, the wire


def test_uncalibrated_pixels_only_and_the_same_pixel_figures() -> None:
    rng = np.random.default_rng(3)
    for trial in range(4):
        mask = np.zeros((96, 128), np.uint8)
        for _ in range(6):
            p = rng.integers(2, 94, 4)
            cv2.line(mask, (int(p[0]), int(p[1])), (int(p[2]) + 30, int(p[3])), 255, int(rng.integers(1, 5)))
        mask[rng.random(mask.shape) > 0.995] = 255   # specks below min_component_px
        m = measure_mask(mask, 5, None)
        assert m.pixels == measure(mask, 5)          # the header's pixel figures do not change
        assert m.ground is None and m.header_fields()["calibrated"] is False
        assert all(c["length_m"] is None and c["severity"] is None and c["type"] for c in m.cracks)
        assert sum(c["area_px"] for c in m.cracks) <= np.count_nonzero(mask)
    vertical = np.zeros((96, 128), np.uint8)
    vertical[10:90, 60:63] = 255                     # image-up taken as forward without calibration
    assert _one(vertical)["type"] == "longitudinal"


def test_at_most_32_cracks_largest_first_totals_over_all() -> None:
    g = Ground.build(square_on(1.0), (W, H))
    mask = np.zeros((H, W), np.uint8)
    for k in range(40):
        r, c = divmod(k, 8)
        mask[20 + 90 * r:20 + 90 * r + 10 + k, 20 + 75 * c:23 + 75 * c] = 255
    m = measure_mask(mask, 5, g)
    assert len(m.cracks) == MAX_CRACKS == wire.MAX_CRACKS
    areas = [c["area_px"] for c in m.cracks]
    assert areas == sorted(areas, reverse=True) and areas[0] == 3 * 49
    assert m.ground["crack_area_m2"] == pytest.approx(np.count_nonzero(mask) * 1e-6, rel=1e-9)
    assert m.pixels.count == 40


def test_headers_pass_the_wire() -> None:
    g = Ground.build(pinhole(), (W, H))
    mask = road_crack_mask(pinhole(), 0.0, 2.5, 0.0, 4.0, 0.02)
    for ground in (g, None):
        m = measure_mask(mask, 5, ground)
        header = {"vehicle_id": "v", "run_id": "0" * 32, "seq": 0, "frame_index": 0, "t_capture": 1.0,
                  "t_publish": 1.0, "infer_ms": 1.0, "model_sha256": "0" * 64, "width": W, "height": H,
                  "crack_ratio": m.pixels.ratio, "crack_count": m.pixels.count, "crack_length_px": m.pixels.length_px,
                  "crack_max_width_px": m.pixels.max_width_px, **m.header_fields()}
        msg = wire.decode(wire.encode_mask(header, wire.png_b64(mask)))
        assert msg.header["calibrated"] is (ground is not None)
        assert (msg.header["ground"] is None) is (ground is None)
        assert msg.header["cracks"][0]["bbox_px"][2] > 0


# The horizon (w = 0) runs down the middle of the image: one bottom corner is behind the camera.
HORIZON_IN_VIEW = [[0.001, 0, 0], [0, 0.001, 0], [0.01, 0, -3.2]]


@pytest.mark.parametrize("Hm,why", [(HORIZON_IN_VIEW, "behind_camera"),
                                    ([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0, 0, 1]], "singular")])
def test_unusable_homographies_are_refused(Hm: list, why: str) -> None:
    with pytest.raises(GroundError) as e:
        Ground.build(Hm, (W, H))
    assert e.value.reason == why


def test_config_section_refuses_bad_ground(tmp_path) -> None:
    from edge.config import ConfigError, load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[ground]\nhomography = {HORIZON_IN_VIEW}\nimage_size = [640, 480]\n")
    with pytest.raises(ConfigError, match="ground.*behind the camera"):
        load_config(cfg)
    cfg.write_text("[ground]\nhomography = [[0.001, 0, 0], [0, 0.001, 0], [0, 0, 1]]\n")
    with pytest.raises(ConfigError, match="image_size is needed"):
        load_config(cfg)
    cfg.write_text("[ground]\nhomography = [[0.001, 0, 0], [0, -0.001, 2.0], [0, 0, 1]]\nimage_size = [640, 480]\n"
                   "severity_mm = [10.0, 75.0]\nforward = \"+y\"\n")
    assert load_config(cfg).ground.enabled


@pytest.mark.parametrize("camera", ["square_on", "pinhole"])
def test_any_mask_measures_and_encodes(camera: str) -> None:
    """Random masks (noise, blobs, lines, the full frame) through a plain and a horizon-cut calibration:
    never an exception, never a number the wire refuses, the pixel figures unchanged."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    g = Ground.build(square_on(2.0, (160, 120)) if camera == "square_on" else pinhole(f=125.0, size=(160, 120)),
                     (160, 120))

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
    @hypothesis.given(st.integers(0, 2**32 - 1), st.sampled_from(["noise", "lines", "full", "edges"]))
    def check(seed: int, kind: str) -> None:
        rng = np.random.default_rng(seed)
        mask = np.zeros((120, 160), np.uint8)
        if kind == "noise":
            mask[rng.random(mask.shape) > rng.uniform(0.5, 0.99)] = 255
        elif kind == "lines":
            for _ in range(rng.integers(1, 12)):
                p = rng.integers(0, 160, 4)
                cv2.line(mask, (int(p[0]), int(p[1]) % 120), (int(p[2]), int(p[3]) % 120), 255, int(rng.integers(1, 9)))
        elif kind == "full":
            mask[:] = 255
        else:
            mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 255
        min_px = int(rng.integers(1, 8))
        m = measure_mask(mask, min_px, g)
        assert m.pixels == measure(mask, min_px)
        header = {"vehicle_id": "v", "run_id": "0" * 32, "seq": 0, "frame_index": 0, "t_capture": 1.0,
                  "t_publish": 1.0, "infer_ms": 1.0, "model_sha256": "0" * 64, "width": 160, "height": 120,
                  "crack_ratio": m.pixels.ratio, "crack_count": m.pixels.count, "crack_length_px": m.pixels.length_px,
                  "crack_max_width_px": m.pixels.max_width_px, **m.header_fields()}
        wire.decode(wire.encode_mask(header, wire.png_b64(mask)))
        assert len(m.cracks) <= MAX_CRACKS
        assert all(c["max_width_mm"] is None or c["max_width_mm"] >= 0 for c in m.cracks)

    check()


def test_only_frames_of_the_calibrated_camera_are_measured() -> None:
    """Masks are scaled to the calibration: a camera in another aspect would get wrong mm, so the
    pipeline asks ``fits`` and measures such frames in pixels only (event=ground_size_mismatch)."""
    g = Ground.build(square_on(1.0, (1280, 720)), (1280, 720))
    assert g.fits(1280, 720) and g.fits(640, 360) and g.fits(1920, 1080)
    assert not g.fits(640, 480) and not g.fits(720, 1280)
