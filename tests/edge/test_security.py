"""CurveZMQ with real sockets on loopback: key files, who receives, who is refused and logged, revocation.

The server side lives in its own zmq.Context (a context has one ZAP handler); viewers use another.
Every receive is bounded; "receives nothing" means nothing within a bounded wait while the
publisher keeps sending and an authorised viewer on the same socket does receive.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq
import zmq.auth

from edge import security
from edge.security import CurveServer, SecurityError

pytestmark = pytest.mark.timeout(60)

PAYLOAD = b"crack-mask-payload-marker-0123456789"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    out = tmp_path / "keys"
    security.create_keys(out, ["alice", "bob", "mallory"])
    auth = out / "authorized"
    auth.mkdir()
    for name in ("alice", "bob"):  # mallory has a well-formed key that nobody authorised
        shutil.copy(out / "viewers" / f"{name}.key", auth)
    return out


@pytest.fixture
def server_ctx(zmq_ctx: zmq.Context) -> zmq.Context:
    return zmq_ctx


@pytest.fixture
def client_ctx() -> Iterator[zmq.Context]:
    """A context of its own, as a viewer on another machine has: no ZAP handler of the server's."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


class Server:
    def __init__(self, ctx: zmq.Context, keys: Path) -> None:
        self.curve = CurveServer(keys / "daemon.key_secret", keys / "authorized")
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.linger = 0
        self.curve.attach(self.sock)
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def close(self) -> None:
        self.sock.close(0)
        self.curve.close()


@pytest.fixture
def server(server_ctx: zmq.Context, keys: Path) -> Iterator[Server]:
    s = Server(server_ctx, keys)
    yield s
    s.close()


def viewer(ctx: zmq.Context, endpoint: str, keys: Path | None, name: str | None) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    sock.reconnect_ivl = 100
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    if name is not None:
        assert keys is not None
        curve = security.load_client(keys / "daemon.key", keys / "viewers" / f"{name}.key_secret")
        assert curve is not None
        curve.apply(sock)
    sock.connect(endpoint)
    return sock


def pump(pub: zmq.Socket, subs: dict[str, zmq.Socket], seconds: float) -> dict[str, int]:
    """Publish every 10 ms for ``seconds`` and count what each viewer receives (never blocks)."""
    got = {n: 0 for n in subs}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            pub.send_multipart([b"mask/t", PAYLOAD], zmq.NOBLOCK)
        except zmq.Again:
            pass
        while True:  # keep the XPUB's subscription queue drained, as the daemon does
            try:
                pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        for name, s in subs.items():
            while s.poll(0):
                frames = s.recv_multipart()
                assert frames[1] == PAYLOAD
                got[name] += 1
        time.sleep(0.01)
    return got


def pump_until(pub: zmq.Socket, subs: dict[str, zmq.Socket], name: str, timeout: float) -> dict[str, int]:
    """Pump until ``name`` received something (bounded by ``timeout``)."""
    total = {n: 0 for n in subs}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not total[name]:
        for n, c in pump(pub, subs, 0.1).items():
            total[n] += c
    return total


# ------------------------------------------------------------------ key files

def test_create_keys_standard_format_private_secrets_and_kept_on_rerun(tmp_path: Path) -> None:
    out = tmp_path / "k"
    made = security.create_keys(out, ["control-room"])
    assert [(p.relative_to(out).as_posix(), c) for p, c in made] == [
        ("daemon.key", True), ("viewers/control-room.key", True)]
    for pub, sec in [(out / "daemon.key", out / "daemon.key_secret"),
                     (out / "viewers/control-room.key", out / "viewers/control-room.key_secret")]:
        public, none = zmq.auth.load_certificate(pub)
        public2, secret = zmq.auth.load_certificate(sec)
        assert none is None and public == public2 and len(public) == 40 and len(secret) == 40
        assert zmq.curve_public(secret) == public  # a real key pair, not two random strings
        assert stat.S_IMODE(sec.stat().st_mode) == 0o600
        assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert not [p for p in out.rglob(".*")]  # no temporary folder left behind
    before = (out / "daemon.key_secret").read_bytes()
    again = security.create_keys(out, ["control-room", "van-2-tablet"])
    assert [c for _, c in again] == [False, False, True]
    assert (out / "daemon.key_secret").read_bytes() == before  # never replaced
    assert zmq.auth.load_certificates(out / "viewers").keys() == {
        zmq.auth.load_certificate(out / "viewers" / f"{n}.key")[0] for n in ("control-room", "van-2-tablet")}


def test_create_keys_refuses_a_bad_viewer_name(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="--viewer '../x'"):
        security.create_keys(tmp_path, ["../x"])


def test_bad_key_files_are_refused_with_their_name(keys: Path) -> None:
    with pytest.raises(SecurityError, match=r"key: .*daemon\.key: holds no secret key"):
        security.load_secret(keys / "daemon.key", "key")
    loose = keys / "viewers" / "alice.key_secret"
    os.chmod(loose, 0o644)
    with pytest.raises(SecurityError, match=r"alice\.key_secret: secret key is readable by others \(mode 644\)"):
        security.load_secret(loose, "key")
    with pytest.raises(SecurityError, match=r"server_key: .*nope\.key: certificate file not found"):
        security.load_client(keys / "nope.key", keys / "viewers" / "bob.key_secret")
    with pytest.raises(SecurityError, match=r"^key: server_key is set"):
        security.load_client(keys / "daemon.key", None)
    (keys / "authorized" / "junk.key").write_text("not a certificate\n")
    with pytest.raises(SecurityError, match=r"security.authorized_keys: .*junk\.key: not a ZeroMQ certificate"):
        CurveServer(keys / "daemon.key_secret", keys / "authorized")
    with pytest.raises(SecurityError, match=r"authorized_keys: .*missing: authorised-keys folder not found"):
        CurveServer(keys / "daemon.key_secret", keys / "missing")


# ------------------------------------------------------------------ policy

@pytest.mark.parametrize("endpoint, reachable", [
    ("tcp://127.0.0.1:5555", False), ("tcp://127.8.9.10:5555", False), ("tcp://localhost:5555", False),
    ("tcp://[::1]:5555", False), ("ipc:///run/crack-edge/pub", False), ("inproc://x", False),
    ("tcp://0.0.0.0:5555", True), ("tcp://*:5555", True), ("tcp://192.168.1.20:5555", True),
    ("tcp://eth0:5555", True), ("tcp://[::]:5555", True), ("tcp://vehicle.example:5555", True),
])
def test_requires_security(endpoint: str, reachable: bool) -> None:
    assert security.requires_security(endpoint) is reachable


def test_policy_refuses_reachable_endpoint_without_keys_unless_insecure_chosen(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="edge.security")
    with pytest.raises(SecurityError, match=r"tcp://0\.0\.0\.0:5555 is reachable .* security\.allow_insecure = true"):
        security.check_policy("tcp://0.0.0.0:5555", secured=False, allow_insecure=False, setting="security")
    security.check_policy("tcp://127.0.0.1:5555", secured=False, allow_insecure=False, setting="security")
    security.check_policy("tcp://0.0.0.0:5555", secured=True, allow_insecure=False, setting="security")
    assert not caplog.records
    security.check_policy("tcp://0.0.0.0:5555", secured=False, allow_insecure=True, setting="security")
    assert "event=insecure endpoint=tcp://0.0.0.0:5555" in caplog.text


# ------------------------------------------------------------------ real sockets

def test_authorised_viewer_receives_unknown_and_plaintext_get_nothing_and_are_logged(
        server: Server, client_ctx: zmq.Context, keys: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="edge.security")
    subs = {"alice": viewer(client_ctx, server.endpoint, keys, "alice"),
            "mallory": viewer(client_ctx, server.endpoint, keys, "mallory"),
            "plain": viewer(client_ctx, server.endpoint, None, None)}
    got = pump_until(server.sock, subs, "alice", timeout=10)
    assert got["alice"] > 0
    more = pump(server.sock, subs, 1.0)  # a bounded wait in which the others had every chance
    assert more["alice"] >= 20 and more["mallory"] == 0 and more["plain"] == 0
    assert got["mallory"] == 0 and got["plain"] == 0
    mallory = zmq.auth.load_certificate(keys / "viewers" / "mallory.key")[0].decode()
    alice = zmq.auth.load_certificate(keys / "viewers" / "alice.key")[0].decode()
    assert f"event=auth_ok peer=127.0.0.1 mechanism=CURVE key={alice} name=alice" in caplog.text
    assert f"event=auth_refused peer=127.0.0.1 reason=Unknown_key mechanism=CURVE key={mallory}" in caplog.text
    # A plaintext viewer is caught by whichever side reads the other's greeting first: the daemon
    # (mechanism mismatch) or the viewer, which hangs up (a failed handshake).  It retries every
    # 100 ms: its refusals are counted, not logged each time.  The address is looked up when the
    # monitor reports the connection; one that closed faster reads peer=? (see the next test).
    plain = [r.getMessage() for r in caplog.records if "mechanism_mismatch" in r.getMessage()
             or "reason=handshake_failed" in r.getMessage()]
    assert 1 <= len(plain) <= 4, plain
    assert all(("peer=127.0.0.1 " in m and " port=" in m) or "peer=? " in m for m in plain), plain


def test_peer_name_of_a_live_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        with socket.create_connection(srv.getsockname()) as client:
            conn, _ = srv.accept()
            with conn:
                assert security._peer_name(conn.fileno()) == client.getsockname()
                assert conn.getpeername() == client.getsockname()  # the original fd is untouched
        assert security._peer_name(999_999) == ("?", 0)


def test_a_viewer_with_the_wrong_daemon_key_gets_nothing(server: Server, client_ctx: zmq.Context, keys: Path,
                                                          tmp_path: Path) -> None:
    security.create_keys(tmp_path / "other", [])  # another vehicle's daemon key
    sock = client_ctx.socket(zmq.SUB)
    sock.linger = 0
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    curve = security.load_client(tmp_path / "other" / "daemon.key", keys / "viewers" / "alice.key_secret")
    curve.apply(sock)
    sock.connect(server.endpoint)
    good = viewer(client_ctx, server.endpoint, keys, "bob")
    got = pump_until(server.sock, {"bob": good, "wrong": sock}, "bob", timeout=10)
    got2 = pump(server.sock, {"bob": good, "wrong": sock}, 0.8)
    assert got2["bob"] > 0 and got["wrong"] == got2["wrong"] == 0


def test_revoked_key_stops_receiving_after_reload_and_reauthentication(
        server: Server, client_ctx: zmq.Context, keys: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="edge.security")
    subs = {"alice": viewer(client_ctx, server.endpoint, keys, "alice"),
            "bob": viewer(client_ctx, server.endpoint, keys, "bob")}
    pump_until(server.sock, subs, "alice", timeout=10)
    got = pump_until(server.sock, subs, "bob", timeout=10)
    assert got["bob"] > 0

    (keys / "authorized" / "bob.key").unlink()
    assert server.curve.reload() == security.Reload(added=[], removed=["bob"])
    # ZAP is asked only at the handshake: the reload alone leaves bob's open connection streaming.
    still = pump(server.sock, subs, 0.5)
    assert still["bob"] > 0, "libzmq changed: a reload now cuts live connections by itself"

    assert server.curve.reauthenticate(server.sock)
    for s in subs.values():  # what was queued before the cut may still be read
        while s.poll(0):
            s.recv_multipart()
    after = pump_until(server.sock, subs, "alice", timeout=10)  # alice reconnects and passes ZAP again
    later = pump(server.sock, subs, 1.0)
    assert after["alice"] > 0 and later["alice"] >= 20
    assert after["bob"] == later["bob"] == 0
    bob = zmq.auth.load_certificate(keys / "viewers" / "bob.key")[0].decode()
    assert f"reason=Unknown_key mechanism=CURVE key={bob}" in caplog.text
    assert "event=connections_cut" in caplog.text

    shutil.copy(keys / "viewers" / "bob.key", keys / "authorized")  # re-admitted: no cut needed
    assert server.curve.reload().added == ["bob"]
    # libzmq ends a connect() whose handshake was refused (an ERROR reply is a protocol error,
    # never retried): a re-admitted viewer connects again (restarts) to be let back in.
    subs["bob-again"] = viewer(client_ctx, server.endpoint, keys, "bob")
    back = pump_until(server.sock, subs, "bob-again", timeout=10)
    assert back["bob-again"] > 0 and back["alice"] > 0 and back["bob"] == 0


def test_reload_with_a_bad_file_still_revokes_and_names_the_file(server: Server, keys: Path, caplog) -> None:
    # Fails closed: a broken file beside the others must not keep a revoked viewer authorised.
    caplog.set_level(logging.WARNING, logger="edge.security")
    (keys / "authorized" / "alice.key").unlink()
    (keys / "authorized" / "broken.key").write_text("garbage\n")
    assert server.curve.reload() == security.Reload(added=[], removed=["alice"], skipped=["broken.key"])
    assert "event=key_skipped" in caplog.text and "broken.key" in caplog.text
    assert sorted(server.curve.names.values()) == ["bob"]
    # The ZAP handler answers from the good keys only: bob's key is still there, alice's is gone.
    assert server.curve.auth is not None
    allowed = set(server.curve.auth.certs["*"])
    assert allowed == {zmq.auth.load_certificate(keys / "viewers" / "bob.key")[0]}


def test_reload_of_a_missing_folder_is_refused_and_says_so(server: Server, keys: Path, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="edge.security")
    shutil.rmtree(keys / "authorized")
    result = server.curve.reload()
    assert result.refused and "authorised-keys folder not found" in result.refused
    assert "event=reload_refused" in caplog.text


class Tap(threading.Thread):
    """A TCP relay between viewer and daemon that keeps a copy of every byte the daemon sent."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True)
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen = bytearray()
        self.stop = threading.Event()

    def run(self) -> None:
        self.listener.settimeout(0.2)
        conns = []
        try:
            while not self.stop.is_set() and not conns:
                try:
                    down, _ = self.listener.accept()
                except socket.timeout:
                    continue
                up = socket.create_connection(self.target, timeout=5)
                conns = [down, up]
            import selectors

            sel = selectors.DefaultSelector()
            for c in conns:
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
            while conns and not self.stop.is_set():
                for key, _ in sel.select(0.1):
                    src = key.fileobj
                    dst = conns[1] if src is conns[0] else conns[0]
                    data = src.recv(65536)
                    if not data:
                        return
                    if src is conns[1]:
                        self.seen += data
                    dst.sendall(data)
        except OSError:
            return
        finally:
            for c in conns:
                c.close()
            self.listener.close()


@pytest.mark.parametrize("secured", [True, False])
def test_traffic_is_encrypted(secured: bool, server_ctx: zmq.Context, client_ctx: zmq.Context, keys: Path) -> None:
    if secured:
        srv = Server(server_ctx, keys)
        pub, endpoint = srv.sock, srv.endpoint
    else:  # the same path in plaintext shows the tap does see payloads when they are not encrypted
        pub = server_ctx.socket(zmq.XPUB)
        pub.linger = 0
        pub.bind("tcp://127.0.0.1:0")
        endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    tap = Tap(endpoint)
    tap.start()
    try:
        sub = viewer(client_ctx, tap.endpoint, keys, "alice" if secured else None)
        got = pump_until(pub, {"v": sub}, "v", timeout=10)
        got2 = pump(pub, {"v": sub}, 0.3)
        assert got["v"] + got2["v"] > 5
        assert (PAYLOAD in bytes(tap.seen)) is not secured
        assert (b"mask/t" in bytes(tap.seen)) is not secured
    finally:
        tap.stop.set()
        tap.join(5)
        if secured:
            srv.close()
        else:
            pub.close(0)
