"""ZeroMQ sockets made the same way everywhere in the viewer: bounded linger, heartbeats, reconnects.

Every socket the viewer opens comes from here, so settings such as heartbeats (which detect
half-open links after a network partition) cannot be forgotten in one command.
"""
from __future__ import annotations

import logging
from typing import Iterable

import zmq

from edge.wire import Defaults

log = logging.getLogger(__name__)


def apply_defaults(sock: zmq.Socket) -> zmq.Socket:
    """Linger, ZMTP heartbeats and reconnect intervals from ``wire.Defaults``."""
    sock.setsockopt(zmq.LINGER, Defaults.LINGER_MS)
    sock.setsockopt(zmq.HEARTBEAT_IVL, Defaults.HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, Defaults.HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, Defaults.HEARTBEAT_TTL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL, Defaults.RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, Defaults.RECONNECT_IVL_MAX_MS)
    return sock


def subscriber(ctx: zmq.Context, endpoints: Iterable[str], topics: Iterable[str] = ("",),
               rcvhwm: int = Defaults.RCVHWM, kind: int = zmq.SUB) -> zmq.Socket:
    """A SUB (or XSUB) connected to every endpoint; it reconnects by itself when a peer returns."""
    sock = apply_defaults(ctx.socket(kind))
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    if kind == zmq.SUB:
        for t in topics:
            sock.setsockopt(zmq.SUBSCRIBE, t.encode())
    for ep in endpoints:
        sock.connect(ep)
        log.info("event=connect endpoint=%s", ep)
    return sock


def publisher(ctx: zmq.Context, endpoint: str, sndhwm: int = Defaults.SNDHWM, kind: int = zmq.XPUB) -> zmq.Socket:
    """A bound (X)PUB; XPUB by default so the sender can see subscriptions arrive."""
    sock = apply_defaults(ctx.socket(kind))
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        sock.close(0)
        raise BindError(f"cannot bind {endpoint}: {e}") from e
    log.info("event=bind endpoint=%s", endpoint)
    return sock


class BindError(OSError):
    """The endpoint cannot be bound (in use, bad address...)."""
