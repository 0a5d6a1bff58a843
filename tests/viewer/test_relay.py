"""`crack-viewer relay`: many daemons to many viewers through one XSUB/XPUB proxy, filters upstream."""
from __future__ import annotations

import zmq

from viewer_testkit import Messages, endpoint, recv_bounded


def test_relay_forwards_many_daemons_to_many_viewers(cli, make_pub, zmq_ctx) -> None:
    pubs = [make_pub(), make_pub()]
    relay_ep = endpoint()
    relay = cli("relay", *[a for p in pubs for a in ("--connect", p.endpoint)], "--bind", relay_ep)
    relay.wait_for(r"event=relay_started")
    everything = zmq_ctx.socket(zmq.SUB)
    everything.setsockopt(zmq.SUBSCRIBE, b"")
    everything.connect(relay_ep)
    only_one = zmq_ctx.socket(zmq.SUB)
    only_one.setsockopt(zmq.SUBSCRIBE, b"mask/veh-1")
    only_one.connect(relay_ep)
    # Both subscriptions travel upstream through the proxy to each daemon.
    for p in pubs:
        subs = {p.wait_subscriber(15), p.wait_subscriber(15)}
        assert subs == {b"\x01", b"\x01mask/veh-1"}
    ms = [Messages(vehicle_id="veh-0"), Messages(vehicle_id="veh-1")]
    sent = []
    for _ in range(3):
        for p, m in zip(pubs, ms):
            frames = m.mask()
            p.send(frames)
            sent.append(frames)
    got_all = [recv_bounded(everything) for _ in range(6)]
    got_one = [recv_bounded(only_one) for _ in range(3)]
    key = lambda f: (f[0], f[1])  # noqa: E731
    assert sorted(map(key, got_all)) == sorted(map(key, sent))
    assert [f[0] for f in got_one] == [b"mask/veh-1"] * 3
    assert got_all[0] in sent  # byte for byte
    assert not only_one.poll(300)  # veh-0 never reached the filtered viewer
    assert relay.stop(10) == 0, relay.err
    assert "event=relay_stopped" in relay.err
