"""sd_notify against a real AF_UNIX datagram socket, including the abstract namespace."""
from __future__ import annotations

import os
import socket
import uuid

import pytest

from edge.systemd import notify, watchdog_period


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_sends_to_a_path_socket(notify_socket):
    path, sock = notify_socket
    assert notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": path})
    assert sock.recv(1024) == b"READY=1\nSTATUS=up"


def test_sends_to_an_abstract_socket():
    name = f"crack-edge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(1024) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_no_op_outside_systemd_and_never_raises(tmp_path):
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "relative/path"}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "@" + "x" * 200}) is False  # name too long


def test_uses_the_process_environment(notify_socket, monkeypatch):
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("STOPPING=1")
    assert sock.recv(1024) == b"STOPPING=1"


def test_watchdog_period(notify_socket):
    path, _ = notify_socket
    assert watchdog_period({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_period({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_period({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}) is None
    assert watchdog_period({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "junk"}) is None
