"""viewer.render: overlay colour where the mask is, mask alone without a frame, tiles, stale look."""
from __future__ import annotations

import pytest

import numpy as np

from edge import wire
from viewer import render
from viewer.state import FleetState


def _state(messages, vehicles: dict[str, bool]) -> FleetState:
    st = FleetState()
    for vid, with_frame in vehicles.items():
        st.on_message(wire.decode(messages(vehicle_id=vid).mask(3, with_frame=with_frame)), 0.0, 1.0)
    return st


def _is_overlay(px: np.ndarray) -> np.ndarray:
    b, g, r = (px[..., i].astype(int) for i in range(3))
    return (r - g > 60) & (r - b > 60)


def test_single_vehicle_overlay_sits_on_the_mask(messages) -> None:
    st = _state(messages, {"v1": True})
    (view,) = st.views(1.0)
    img = render.render_fleet([view], tile_width=640)
    # Tile: band, then the 64x48 frame scaled x10 to 640x480, then the footer.
    assert img.shape == (render.BAND_H + 480 + render.FOOTER_H, 640, 3)
    pic = img[render.BAND_H:render.BAND_H + 480]
    mask = np.repeat(np.repeat(view.mask > 0, 10, axis=0), 10, axis=1)
    inner = mask & np.roll(mask, 10, 0) & np.roll(mask, -10, 0) & np.roll(mask, 10, 1) & np.roll(mask, -10, 1)
    outer = ~(mask | np.roll(mask, 10, 0) | np.roll(mask, -10, 0) | np.roll(mask, 10, 1) | np.roll(mask, -10, 1))
    assert _is_overlay(pic[inner]).mean() > 0.99
    assert _is_overlay(pic[outer]).mean() < 0.01
    # The band is dark with white text in it.
    band = img[:render.BAND_H]
    assert (band == render.BAND_BGR).all(axis=2).mean() > 0.7
    assert (band.min(axis=2) > 200).sum() > 200


def test_tile_keeps_the_camera_aspect_when_the_daemon_gives_it(messages) -> None:
    import dataclasses

    (view,) = _state(messages, {"v1": True}).views(1.0)
    wide = dataclasses.replace(view, frame_size=(480, 320))
    img = render.render_fleet([wide], tile_width=600)
    assert img.shape == (render.BAND_H + 400 + render.FOOTER_H, 600, 3)  # 480x320 scaled to width 600


def test_mask_alone_without_frame(messages) -> None:
    st = _state(messages, {"v1": False})
    (view,) = st.views(1.0)
    pic, note = render.vehicle_image(view)
    assert note == "mask only"
    assert (pic[view.mask > 0] == render.OVERLAY_BGR).all()
    assert (pic[view.mask == 0] == 0).all()


def test_many_vehicles_tile_on_a_grid_and_stale_looks_stale(messages) -> None:
    st = _state(messages, {"a": True, "b": False, "c": True})
    views = st.views(1.0)
    img = render.render_fleet(views, tile_width=320, footer="3 endpoints")
    tile_h = render.BAND_H + 240
    assert img.shape == (2 * tile_h + render.GAP + render.FOOTER_H, 2 * 320 + render.GAP, 3)
    stale_views = st.views(100.0)
    assert all(v.stale for v in stale_views)
    img2 = render.render_fleet(stale_views, tile_width=320)
    band = img2[:render.BAND_H, :320]
    assert (band == render.STALE_BAND_BGR).all(axis=2).mean() > 0.7
    assert render.text_lines(stale_views[0])[0].split()[1] == "STALE"


def test_nothing_yet_is_a_waiting_screen() -> None:
    img = render.render_fleet([], 400, footer="waiting for tcp://x:1")
    assert img.shape == (300, 400, 3) and (img.max(axis=2) > 200).sum() > 50


def test_band_shows_fix_speed_and_millimetres_when_calibrated(messages) -> None:
    m = messages(vehicle_id="v1")
    pos = {"source": "gpx-log", "fix": True, "reason": "", "lat": 52.0116, "lon": 4.3571, "alt_m": 2.0,
           "speed_mps": 5.0, "heading_deg": 358.0, "quality": "3d", "age_s": 0.4}
    ground = {"crack_length_m": 1.234, "crack_max_width_mm": 12.5, "crack_area_m2": 0.0123,
              "surveyed_area_m2": 0.35, "footprint_m": [[-0.4, 1.5], [0.4, 1.5], [0.4, 1.0], [-0.4, 1.0]]}
    st = FleetState()
    st.on_message(wire.decode(m.mask(calibrated=True, ground=ground, position=pos)), 0.0, 1.0)
    (view,) = st.views(1.0)
    lines = render.text_lines(view)
    assert "len 1.23 m" in lines[2] and "width 12.5 mm" in lines[2] and "area 0.0123 m2" in lines[2]
    assert lines[3].startswith("fix 52.011600 4.357100 3d") and "speed 5.0 m/s (18 km/h)" in lines[3]
    plain = FleetState()
    plain.on_message(wire.decode(m.mask(calibrated=False, ground=None, position={**pos, "fix": False,
                                                                               "reason": "stale"})), 0.0, 1.0)
    (view2,) = plain.views(1.0)
    lines2 = render.text_lines(view2)
    assert "px" in lines2[2] and "(not calibrated)" in lines2[2] and lines2[3] == "no fix (stale)"
    # The fourth line is drawn: white text in the band's last line.
    img = render.render_fleet([view], tile_width=640)
    last = img[render.LINE_H * 3:render.BAND_H]
    assert (last.min(axis=2) > 200).sum() > 50


def test_band_survives_nonsense_in_ground_and_position(messages) -> None:
    """Mistyped nested fields are refused by the typed headers; extreme but valid ones still draw."""
    m = messages(vehicle_id="v1")
    with pytest.raises(wire.WireError):
        wire.decode(m.mask(ground={"crack_length_m": "far", "crack_max_width_mm": [1], "crack_area_m2": True}))
    with pytest.raises(wire.WireError):
        wire.decode(m.mask(position={"source": "gpsd", "fix": True, "lat": "x", "lon": None, "quality": 7}))
    st = FleetState()
    st.on_message(wire.decode(m.mask(ground={"crack_length_m": 1e308, "crack_max_width_mm": 1e308,
                                             "crack_area_m2": 0.0},
                                     position={"source": "gpsd", "fix": True, "lat": None, "lon": None,
                                               "quality": "3d", "speed_mps": 1e308})), 0.0, 1.0)
    (view,) = st.views(1.0)
    lines = render.text_lines(view)
    assert "len " in lines[2] and lines[3].startswith("fix - - 3d")
    render.render_fleet([view], tile_width=320)


def test_speed_from_the_fixes_when_the_source_sends_none(messages) -> None:
    """A GPX log has no speed: the tile shows the speed between the last two fixes, marked ~."""
    m = messages(vehicle_id="v1")
    st = FleetState()
    pos = {"source": "gpx-log", "fix": True, "reason": "", "lat": 52.0, "lon": 4.0, "alt_m": None,
           "speed_mps": None, "heading_deg": None, "quality": "3d", "age_s": 0.1}
    st.on_message(wire.decode(m.mask(t_capture=1000.0, position=pos)), 0.0, 1.0)
    (first,) = st.views(1.0)
    assert "speed - (-)" in render.text_lines(first)[3]
    # 9 m north in 1.5 s: 6 m/s, heading 0.
    st.on_message(wire.decode(m.mask(t_capture=1001.5, position={**pos, "lat": 52.0 + 9 / 111195.0})), 0.0, 1.1)
    (view,) = st.views(1.1)
    line = render.text_lines(view)[3]
    assert "speed ~6.0 m/s (22 km/h)" in line and "hdg ~0" in line
