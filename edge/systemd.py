"""sd_notify(3) without libsystemd: READY, STATUS, WATCHDOG and STOPPING for ``Type=notify``.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op; a notification that cannot be
sent is logged at debug level and never raises: the daemon must not die because systemd went
away or the socket is full.
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(env: Mapping[str, str]) -> str | None:
    addr = env.get("NOTIFY_SOCKET", "")
    if not addr or addr[0] not in ("/", "@"):
        return None
    # A leading '@' names a socket in the abstract namespace (a NUL byte on the wire).
    return "\0" + addr[1:] if addr[0] == "@" else addr


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. "READY=1" or "STATUS=..."); True when a datagram went out."""
    addr = _address(os.environ if env is None else env)
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(0.5)  # a full receive queue must not stall the daemon's tick
            sock.connect(addr)
            sock.sendall(state.encode("utf-8", "replace"))
        return True
    except (OSError, ValueError) as e:
        log.debug("sd_notify failed state=%r error=%s", state[:40], e)
        return False


def watchdog_period(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when no watchdog is set."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = int(env.get("WATCHDOG_PID", "0") or 0)
    except ValueError:
        return None
    if usec <= 0 or (pid and pid != os.getpid()) or _address(env) is None:
        return None
    return usec / 2e6
