"""viewer.state: drops from seq gaps, restarts from run_id, stale and back, fps and latency."""
from __future__ import annotations

from edge import wire
from viewer.state import FleetState


def _msg(frames: list[bytes]) -> wire.Message:
    return wire.decode(frames)


def test_drops_restarts_latency(messages) -> None:
    m = messages(vehicle_id="v1")
    st = FleetState(stale_after_s=3.0)
    for seq in (0, 1, 2, 5, 6):  # 3 and 4 lost on the way
        frames = m.mask(seq)
        v = st.on_message(_msg(frames), t_wall=wire.decode(frames).header["t_publish"] + 0.05, now=10.0 + seq * 0.1)
    assert v.drops == 2 and v.restarts == 0 and v.masks == 5
    assert abs(v.latency_publish_s - 0.05) < 1e-6 and abs(v.latency_capture_s - 0.07) < 1e-6
    # Status messages carry their own seq; they do not make mask drops.
    st.on_message(_msg(m.status(0)), t_wall=0, now=10.7)
    st.on_message(_msg(m.status(41)), t_wall=0, now=10.8)
    assert st.vehicles["v1"].drops == 2 + 40  # status 1..40 lost: a status gap is a loss too
    assert st.views(10.8)[0].seq == 6  # the view shows the last mask's seq, not the status's
    # The daemon restarts: new run_id, seq from 0 again.
    m2 = messages(vehicle_id="v1")
    st.on_message(_msg(m2.mask(0)), t_wall=0, now=11.0)
    v = st.vehicles["v1"]
    assert v.restarts == 1 and v.drops == 42 and v.run_id == m2.run_id


def test_seq_going_back_in_the_same_run_counts_as_restart(messages) -> None:
    m = messages()
    st = FleetState()
    for seq in (0, 1, 2, 0, 1):
        st.on_message(_msg(m.mask(seq)), 0.0, 1.0)
    v = st.vehicles[m.vehicle_id]
    assert v.restarts == 1 and v.drops == 0


def test_stale_from_silence_and_back_by_itself(messages) -> None:
    m = messages()
    st = FleetState(stale_after_s=3.0)
    st.on_message(_msg(m.mask()), 0.0, now=100.0)
    assert st.tick(102.9) == []
    st.on_message(_msg(m.status()), 0.0, now=102.9)  # a heartbeat keeps it alive
    assert st.tick(105.8) == []
    assert st.tick(106.0) == [m.vehicle_id]
    (view,) = st.views(106.5)
    assert view.stale and abs(view.silent_s - 3.6) < 1e-9 and view.fps == 0.0
    assert st.tick(107) == []  # marked once, not every tick
    st.on_message(_msg(m.status()), 0.0, now=110.0)
    (view,) = st.views(110.0)
    assert not view.stale and st.vehicles[m.vehicle_id].stale_events == 1


def test_fps_from_arrivals_and_views_sorted(messages) -> None:
    st = FleetState()
    a, b = messages(vehicle_id="b-truck"), messages(vehicle_id="a-truck")
    for i in range(21):
        st.on_message(_msg(a.mask()), 0.0, now=50.0 + i * 0.1)   # 10 fps
        st.on_message(_msg(b.mask(with_frame=False)), 0.0, now=50.0 + i * 0.2)
    views = st.views(52.0)
    assert [v.vehicle_id for v in views] == ["a-truck", "b-truck"]
    assert abs(views[1].fps - 10.0) < 0.01
    assert views[0].frame_jpeg is None and views[1].frame_jpeg is not None
    assert views[1].crack_ratio is not None and views[1].mask.shape == (48, 64)
