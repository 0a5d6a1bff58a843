"""ZeroMQ sockets made the same way everywhere in the viewer: bounded linger, heartbeats, reconnects.

Every socket the viewer opens comes from here, so settings such as heartbeats (which detect
half-open links after a network partition) cannot be forgotten in one command.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import zmq

from edge.wire import MAX_FRAME_BYTES, MAX_HEADER_BYTES, Defaults

log = logging.getLogger(__name__)

# The largest frame a valid message has: a base64 payload (MAX_FRAME_BYTES), the header or a topic.
MAX_RECEIVE_FRAME_BYTES = max(MAX_FRAME_BYTES, MAX_HEADER_BYTES)


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
               rcvhwm: int = Defaults.RCVHWM, kind: int = zmq.SUB, curve: Any = None,
               before_connect: Callable[[zmq.Socket], Any] | None = None) -> zmq.Socket:
    """A SUB (or XSUB) connected to every endpoint; it reconnects by itself when a peer returns.

    ``curve`` (edge.security.ClientCurve) makes each connection a CurveZMQ client.
    ``before_connect(sock)`` runs before the first connect (a socket monitor attached later would
    miss a handshake refused at once).
    """
    sock = apply_defaults(ctx.socket(kind))
    # No ZMTP heartbeat of its own on a receiving socket: when a slow viewer's queue is full its
    # engine stops reading, its heartbeat times out, and libzmq 4.3 then aborts the whole process
    # on reconnecting (assertion _input_stopped, libzmq #3937 / #4767; a flood of messages was
    # enough).  The publisher's heartbeats still drop a dead viewer on its side; this side finds a
    # half-open link by TCP keepalive, which the kernel answers whether or not we read.
    sock.setsockopt(zmq.HEARTBEAT_IVL, 0)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, Defaults.TCP_KEEPALIVE_IDLE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, Defaults.TCP_KEEPALIVE_INTVL_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, Defaults.TCP_KEEPALIVE_CNT)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    # ZeroMQ checks this per frame, before receiving it: a peer sending a frame larger than the wire
    # allows is disconnected (and reconnected), so no receiver ever holds a 270 MiB message.
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_RECEIVE_FRAME_BYTES)
    if kind == zmq.SUB:
        for t in topics:
            sock.setsockopt(zmq.SUBSCRIBE, t.encode())
    if before_connect is not None:
        before_connect(sock)
    for i, ep in enumerate(endpoints):
        if curve is not None:
            curve.apply(sock, i)
        sock.connect(ep)
        log.info("event=connect endpoint=%s curve=%s", ep, "yes" if curve is not None else "no")
    return sock


def publisher(ctx: zmq.Context, endpoint: str, sndhwm: int = Defaults.SNDHWM, kind: int = zmq.XPUB,
              curve_server: Any = None) -> zmq.Socket:
    """A bound (X)PUB; XPUB by default so the sender can see subscriptions arrive.

    ``curve_server`` (edge.security.CurveServer) is attached before binding; the caller closes it.
    """
    sock = apply_defaults(ctx.socket(kind))
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    if curve_server is not None:
        curve_server.attach(sock)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        sock.close(0)
        raise BindError(f"cannot bind {endpoint}: {e}") from e
    log.info("event=bind endpoint=%s", endpoint)
    return sock


class BindError(OSError):
    """The endpoint cannot be bound (in use, bad address...)."""
