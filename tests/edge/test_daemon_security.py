"""CurveZMQ on the real daemon (a subprocess): who receives, who is refused and logged, SIGHUP revocation,
and the refusal to publish in the clear on a reachable endpoint.

Viewers are plain pyzmq SUB sockets made CURVE clients with ``edge.security.load_client`` and
decoded with ``edge.wire`` only; every receive is bounded.
"""
from __future__ import annotations

import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from edge import security, wire

pytestmark = pytest.mark.timeout(150)


def base_args(model: Path, endpoint: str, *extra: str) -> list[str]:
    return ["--model", str(model), "--backend", "onnxruntime", "--threads", "1", "--publish", endpoint,
            "--inference-size", "64x64", "--vehicle-id", "van-7", *extra]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    out = tmp_path / "keys"
    security.create_keys(out, ["alice", "bob", "mallory"])
    (out / "authorized").mkdir()
    for name in ("alice", "bob"):
        shutil.copy(out / "viewers" / f"{name}.key", out / "authorized")
    return out


def secure_env(keys: Path) -> dict[str, str]:
    return {"CRACK_EDGE_SECURITY__SECRET_KEY": str(keys / "daemon.key_secret"),
            "CRACK_EDGE_SECURITY__AUTHORIZED_KEYS": str(keys / "authorized")}


class Viewer:
    def __init__(self, ctx: zmq.Context, endpoint: str, keys: Path, name: str | None) -> None:
        self.name = name
        self.sock = ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.SUBSCRIBE, b"mask/")
        if name is not None:
            security.load_client(keys / "daemon.key", keys / "viewers" / f"{name}.key_secret").apply(self.sock)
        self.sock.connect(endpoint)

    def first(self, timeout: float) -> wire.Message | None:
        if self.sock.poll(int(timeout * 1000)):
            return wire.decode(self.sock.recv_multipart(), decode_mask=False)
        return None

    def drain(self) -> None:
        while self.sock.poll(0):
            self.sock.recv_multipart()


def collect(viewers: dict[str, Viewer], seconds: float) -> dict[str, list[wire.Message]]:
    """What each viewer receives in the same ``seconds`` (one bounded poll over all of them)."""
    poller = zmq.Poller()
    by_sock = {}
    for name, v in viewers.items():
        poller.register(v.sock, zmq.POLLIN)
        by_sock[v.sock] = name
    out: dict[str, list[wire.Message]] = {n: [] for n in viewers}
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        for sock, _ in poller.poll(int(left * 1000) + 1):
            out[by_sock[sock]].append(wire.decode(sock.recv_multipart(), decode_mask=False))
    return out


def wait_log(d: Any, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in d.log():
            return True
        time.sleep(0.05)
    return False


def public(keys: Path, name: str) -> str:
    return zmq.auth.load_certificate(keys / "viewers" / f"{name}.key")[0].decode()


def test_only_authorised_viewers_receive_and_sighup_revokes(student_onnx, endpoint, make_images, edge_daemon,
                                                           zmq_ctx, keys) -> None:
    folder = make_images("cam", 5)
    viewers = {n: Viewer(zmq_ctx, endpoint, keys, n) for n in ("alice", "bob", "mallory")}
    viewers["plain"] = Viewer(zmq_ctx, endpoint, keys, None)
    d = edge_daemon(*base_args(student_onnx, endpoint, "--source", str(folder), "--mode", "latest", "--pace"),
                    env={**secure_env(keys), "CRACK_EDGE_SOURCE__FPS": "20"})
    first = {n: viewers[n].first(45) for n in ("alice", "bob")}
    assert first["alice"] is not None and first["bob"] is not None, d.log()
    # In the same window both authorised viewers stream; the unknown key and the plaintext viewer
    # (connected since before the daemon started, retrying all along) get nothing.
    got = collect(viewers, 2.0)
    assert len(got["alice"]) >= 5 and len(got["bob"]) >= 5, d.log()
    assert got["mallory"] == [] and got["plain"] == []
    log = d.log()
    assert f"event=auth_refused peer=127.0.0.1 reason=Unknown_key mechanism=CURVE key={public(keys, 'mallory')}" in log
    # The plaintext viewer: refused by the daemon (mechanism mismatch) or hanging up itself on seeing
    # CURVE in the daemon's greeting; either way the daemon logs a failed handshake.
    assert "reason=mechanism_mismatch(plaintext_or_other_security)" in log or "reason=handshake_failed(errno=" in log
    assert f"key={public(keys, 'alice')} name=alice" in log and f"key={public(keys, 'bob')} name=bob" in log
    before = got["alice"][-1].header

    (keys / "authorized" / "bob.key").unlink()
    d.proc.send_signal(signal.SIGHUP)
    assert wait_log(d, "event=connections_cut", 10), d.log()
    assert "event=keys_reloaded authorised=1 added=- removed=bob" in d.log()
    for v in viewers.values():  # what was queued before the cut may still be read
        v.drain()
    back = viewers["alice"].first(15)
    assert back is not None, d.log()
    after = collect(viewers, 2.0)
    assert len(after["alice"]) >= 5
    assert after["bob"] == [] and after["mallory"] == [] and after["plain"] == []
    # The same stream went on: same process and run, sequence continuing.
    assert back.header["run_id"] == before["run_id"] and back.header["seq"] > before["seq"]
    assert f"reason=Unknown_key mechanism=CURVE key={public(keys, 'bob')}" in d.log()
    assert d.proc.poll() is None


def test_sighup_without_keys_is_harmless(student_onnx, endpoint, make_images, edge_daemon, subscriber) -> None:
    folder = make_images("cam", 3)
    sub = subscriber(endpoint, topics=(b"mask/",))
    d = edge_daemon(*base_args(student_onnx, endpoint, "--source", str(folder), "--mode", "latest", "--pace"))
    assert sub.recv(45) is not None, d.log()
    d.proc.send_signal(signal.SIGHUP)
    assert wait_log(d, "SIGHUP: no keys configured", 10), d.log()
    assert sub.recv(10) is not None and d.proc.poll() is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def test_reachable_endpoint_without_keys_refuses_to_start_unless_insecure_chosen(student_onnx, make_images,
                                                                                edge_daemon) -> None:
    folder = make_images("cam", 2)
    endpoint = f"tcp://0.0.0.0:{_free_port()}"
    d = edge_daemon(*base_args(student_onnx, endpoint, "--source", str(folder), "--no-loop"))
    assert d.wait(30) == 78, d.log()
    assert "security.allow_insecure = true" in d.log() and endpoint in d.log()

    ok = edge_daemon(*base_args(student_onnx, endpoint, "--source", str(folder), "--no-loop"),
                     env={"CRACK_EDGE_SECURITY__ALLOW_INSECURE": "true"})
    assert ok.wait(60) == 0, ok.log()
    assert f"event=insecure endpoint={endpoint}" in ok.log()


def test_bad_key_file_is_named_and_exits_78(student_onnx, endpoint, make_images, edge_daemon, keys) -> None:
    folder = make_images("cam", 2)
    env = {**secure_env(keys), "CRACK_EDGE_SECURITY__SECRET_KEY": str(keys / "daemon.key")}  # the public one
    d = edge_daemon(*base_args(student_onnx, endpoint, "--source", str(folder), "--no-loop"), env=env)
    assert d.wait(30) == 78, d.log()
    assert f"security.secret_key: {keys / 'daemon.key'}: holds no secret key" in d.log()


def test_reload_command_reports_skipped_files_and_fails_when_refused(student_onnx, endpoint, make_images,
                                                                     edge_daemon, zmq_ctx, keys) -> None:
    import subprocess
    import sys

    folder = make_images("cam", 3)
    alice = Viewer(zmq_ctx, endpoint, keys, "alice")
    d = edge_daemon(*base_args(student_onnx, endpoint, "--source", str(folder), "--mode", "latest", "--pace"),
                    env=secure_env(keys))
    assert alice.first(45) is not None, d.log()

    def reload() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge.cli", "reload", "--pid", str(d.pid), "--timeout", "15"],
                              capture_output=True, text=True, timeout=30)

    (keys / "authorized" / "bob.key").unlink()
    (keys / "authorized" / "broken.key").write_text("garbage\n")
    r = reload()
    assert r.returncode == 0 and "removed=bob" in r.stdout and "skipped=broken.key" in r.stdout, r.stdout + r.stderr
    assert "event=key_skipped file=broken.key" in d.log()
    shutil.rmtree(keys / "authorized")
    r = reload()
    assert r.returncode == 78 and "authorised-keys folder not found" in r.stderr, r.stdout + r.stderr
    assert d.proc.poll() is None
