"""CurveZMQ in the viewer: `watch`, `record` and `relay` take --server-key / --key; the relay is secured on
both sides.  Stand-in daemons are XPUB sockets made CurveZMQ servers by edge.security, each in its own
context (one ZAP handler per context); every receive is bounded.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq
import zmq.auth

from common import exits
from edge import security
from edge.recording import read_records
from viewer_testkit import Messages, endpoint, run_cli

pytestmark = pytest.mark.timeout(90)


class SecurePub:
    """A stand-in daemon: XPUB, CurveZMQ server with its own key pair and authorised folder."""

    def __init__(self, keys: Path, authorized: Path) -> None:
        self.ctx = zmq.Context()
        self.endpoint = endpoint()
        self.curve = security.CurveServer(keys / "daemon.key_secret", authorized)
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.linger = 0
        self.curve.attach(self.sock)
        self.sock.bind(self.endpoint)

    def wait_subscriber(self, timeout_s: float = 15.0) -> bytes:
        if not self.sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no authenticated subscriber on {self.endpoint} within {timeout_s}s")
        return self.sock.recv()

    def send_for(self, frames_fn, seconds: float, gap: float = 0.05) -> int:
        n = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sock.send_multipart(frames_fn())
            n += 1
            time.sleep(gap)
        return n

    def close(self) -> None:
        self.sock.close(0)
        self.curve.close()
        self.ctx.term()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """v1: daemon 1 + viewers alice, mallory, relay; v2: daemon 2. Folders: a1 (daemon 1), a2, ar (relay)."""
    security.create_keys(tmp_path / "v1", ["alice", "mallory", "relay"])
    security.create_keys(tmp_path / "v2")
    for folder, names in (("a1", ["alice", "relay"]), ("a2", ["relay"]), ("ar", ["alice"])):
        (tmp_path / folder).mkdir()
        for n in names:
            shutil.copy(tmp_path / "v1" / "viewers" / f"{n}.key", tmp_path / folder)
    return tmp_path


@pytest.fixture
def pubs() -> Iterator[list[SecurePub]]:
    made: list[SecurePub] = []
    yield made
    for p in made:
        p.close()


def viewer_key(keys: Path, name: str) -> str:
    return str(keys / "v1" / "viewers" / f"{name}.key_secret")


def test_record_with_keys_receives_and_refused_viewers_exit_77(cli, keys: Path, pubs, tmp_path: Path) -> None:
    pub = SecurePub(keys / "v1", keys / "a1")
    pubs.append(pub)
    m = Messages(vehicle_id="van-1")
    good = cli("record", "--connect", pub.endpoint, "--out", tmp_path / "good", "--count", 5,
               "--server-key", keys / "v1" / "daemon.key", "--key", viewer_key(keys, "alice"))
    plain = cli("record", "--connect", pub.endpoint, "--out", tmp_path / "plain", "--duration", 20)
    stranger = cli("record", "--connect", pub.endpoint, "--out", tmp_path / "stranger", "--duration", 20,
                   "--server-key", keys / "v1" / "daemon.key", "--key", viewer_key(keys, "mallory"))
    wrong_server = cli("watch", "--headless", "--out", tmp_path / "w", "--connect", pub.endpoint, "--duration", 20,
                       "--server-key", keys / "v2" / "daemon.key", "--key", viewer_key(keys, "alice"))
    pub.wait_subscriber()
    pub.send_for(m.mask, 3.2)
    assert good.wait(20) == 0, good.err
    assert len(list(read_records(tmp_path / "good"))) == 5
    # Each refused viewer says why, as a WARNING, and exits 77 well before its --duration (was: an
    # INFO line without the reason and exit 0 after 20 s).
    # (A plaintext viewer is caught by whichever side reads the other's greeting first.)
    for p, whys in ((plain, ["reason=mechanism_mismatch", "reason=server_hung_up(errno=32 Broken pipe: the endpoint may"]),
                    (stranger, ["reason=auth_refused(zap=400"]), (wrong_server, ["reason=server_hung_up(errno="])):
        assert p.wait(15) == exits.REFUSED, p.err
        line = f"WARNING viewer.subscriber event=handshake_failed endpoint={pub.endpoint} "
        assert any(line + why in p.err for why in whys), p.err
        assert "event=refused" in p.err and "Traceback" not in p.err
    assert "messages=0" in plain.err and "messages=0" in stranger.err


def test_a_refused_viewer_that_runs_to_its_duration_exits_77(cli, keys: Path, pubs, tmp_path: Path) -> None:
    # Two endpoints, one refusing, one not there: not "all refused", so it runs its 3 s, then says so.
    pub = SecurePub(keys / "v1", keys / "a1")
    pubs.append(pub)
    r = cli("record", "--connect", pub.endpoint, "--connect", endpoint(), "--out", tmp_path / "r", "--duration", 3,
            "--server-key", keys / "v1" / "daemon.key", "--key", viewer_key(keys, "mallory"))
    assert r.wait(20) == exits.REFUSED, r.err
    assert "event=refused received=0" in r.err


def test_watch_headless_with_keys(cli, keys: Path, pubs, tmp_path: Path) -> None:
    pub = SecurePub(keys / "v1", keys / "a1")
    pubs.append(pub)
    w = cli("watch", "--headless", "--out", tmp_path / "png", "--count", 3, "--connect", pub.endpoint,
            "--server-key", keys / "v1" / "daemon.key", "--key", viewer_key(keys, "alice"))
    pub.wait_subscriber()
    m = Messages(vehicle_id="van-1")
    deadline = time.monotonic() + 20
    while w.p.poll() is None and time.monotonic() < deadline:
        pub.sock.send_multipart(m.mask())
        time.sleep(0.05)
    assert w.wait(10) == 0, w.err
    assert len(list((tmp_path / "png").rglob("*.png"))) >= 3


def test_relay_secured_on_both_sides(cli, keys: Path, pubs, zmq_ctx: zmq.Context) -> None:
    d1 = SecurePub(keys / "v1", keys / "a1")
    d2 = SecurePub(keys / "v2", keys / "a2")
    pubs.extend([d1, d2])
    relay_ep = endpoint()
    relay = cli("relay", "--connect", d1.endpoint, "--connect", d2.endpoint, "--bind", relay_ep,
                "--server-key", keys / "v1" / "daemon.key", "--server-key", keys / "v2" / "daemon.key",
                "--key", viewer_key(keys, "relay"), "--authorized-keys", keys / "ar")
    relay.wait_for(r"event=relay_started")
    relay_public = keys / "v1" / "viewers" / "relay.key"

    def sub(name: str | None) -> zmq.Socket:
        s = zmq_ctx.socket(zmq.SUB)
        s.linger = 0
        s.setsockopt(zmq.SUBSCRIBE, b"")
        if name:
            security.load_client(relay_public, Path(viewer_key(keys, name))).apply(s)
        s.connect(relay_ep)
        return s

    alice, mallory, plain = sub("alice"), sub("mallory"), sub(None)
    for d in (d1, d2):  # alice's subscription reached each daemon through the relay's CURVE client side
        assert d.wait_subscriber() == b"\x01"
    m1, m2 = Messages(vehicle_id="veh-1"), Messages(vehicle_id="veh-2")
    seen: dict[str, set[bytes]] = {"alice": set(), "mallory": set(), "plain": set()}
    poller = zmq.Poller()
    socks = {alice: "alice", mallory: "mallory", plain: "plain"}
    for s in socks:
        poller.register(s, zmq.POLLIN)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        d1.sock.send_multipart(m1.mask())
        d2.sock.send_multipart(m2.mask())
        for s, _ in poller.poll(50):
            seen[socks[s]].add(s.recv_multipart()[0])
    assert seen["alice"] == {b"mask/veh-1", b"mask/veh-2"}
    assert seen["mallory"] == set() and seen["plain"] == set()
    assert relay.stop(10) == 0, relay.err
    mallory_key = zmq.auth.load_certificate(keys / "v1" / "viewers" / "mallory.key")[0].decode()
    assert f"reason=Unknown_key mechanism=CURVE key={mallory_key}" in relay.err


def test_a_relay_every_daemon_refuses_exits_77(cli, keys: Path, pubs, tmp_path: Path) -> None:
    # mallory's key is in no daemon's folder: the relay says why and stops with 77 (was: it relayed
    # nothing, forever, and exited 0 on SIGTERM).
    pub = SecurePub(keys / "v1", keys / "a1")
    pubs.append(pub)
    relay = cli("relay", "--connect", pub.endpoint, "--bind", endpoint(),
                "--server-key", keys / "v1" / "daemon.key", "--key", viewer_key(keys, "mallory"),
                "--authorized-keys", keys / "ar")
    assert relay.wait(20) == exits.REFUSED, relay.err
    assert f"event=handshake_failed endpoint={pub.endpoint} reason=auth_refused(zap=400" in relay.err
    assert "event=refused forwarded=0" in relay.err and "Traceback" not in relay.err


@pytest.mark.parametrize("args, named", [
    (["record", "--out", "x", "--server-key", "daemon.key"], "key: server_key is set"),
    (["record", "--out", "x", "--key", "me.key_secret"], "server_key: key is set"),
    (["watch", "--server-key", "nope.key", "--key", "nope.key_secret"], "certificate file not found"),
    (["relay", "--bind", "tcp://0.0.0.0:5599"], "relay.allow_insecure = true"),
    (["relay", "--authorized-keys", "."], "relay.authorized_keys needs the relay's own key pair"),
])
def test_security_settings_are_checked_at_start(args: list[str], named: str, tmp_path: Path) -> None:
    r = run_cli(*args, "--connect", "tcp://127.0.0.1:5555", timeout=30)
    assert r.returncode == 78, r.stderr
    assert named in r.stderr
