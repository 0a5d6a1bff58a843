"""`crack-viewer relay`: many daemons to many viewers through ZeroMQ's own proxy (XSUB -> XPUB).

A control room connects once, to the relay, instead of to every vehicle.  Subscriptions flow
upstream through the proxy, so a viewer that asks for ``mask/truck-7`` only gets that topic.
The proxy runs in a thread; the main thread waits for a signal and stops it through the
proxy's control socket, so SIGTERM is answered at once.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import zmq

from viewer.config import ViewerConfig
from viewer.sockets import publisher, subscriber

log = logging.getLogger(__name__)


class RelayApp:
    def __init__(self, cfg: ViewerConfig) -> None:
        self.cfg = cfg
        self.stop = threading.Event()

    def serve(self) -> int:
        self.ctx = zmq.Context()
        # Security on both sides: a CURVE client of the daemons, a CURVE server (own authorised
        # folder, same key pair) for the viewers.
        front = subscriber(self.ctx, self.cfg.connect, rcvhwm=self.cfg.rcvhwm, kind=zmq.XSUB,
                           curve=self.cfg.client_curve())
        self.curve_server = None
        if self.cfg.relay.authorized_keys is not None:
            from edge.security import CurveServer

            assert self.cfg.key is not None, "checked by ViewerConfig.require"
            self.curve_server = CurveServer(self.cfg.key, self.cfg.relay.authorized_keys, setting="relay")
        try:
            back = publisher(self.ctx, self.cfg.relay.bind, kind=zmq.XPUB, curve_server=self.curve_server)
        except OSError:
            front.close()
            if self.curve_server is not None:
                self.curve_server.close()
            self.ctx.term()
            raise
        ctl_addr = f"inproc://relay-control-{id(self)}"
        ctl_server = self.ctx.socket(zmq.PAIR)
        ctl_server.bind(ctl_addr)
        ctl_client = self.ctx.socket(zmq.PAIR)
        ctl_client.connect(ctl_addr)
        thread = threading.Thread(target=self._proxy, args=(front, back, ctl_server), name="relay-proxy", daemon=True)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        thread.start()
        log.info("event=relay_started upstream=%s bind=%s", ",".join(self.cfg.connect), self.cfg.relay.bind)
        try:
            while not self.stop.wait(0.2) and thread.is_alive():
                pass
        finally:
            ctl_client.send(b"TERMINATE")
            thread.join(timeout=5)
            for s, h in old.items():
                signal.signal(s, h)
            for sock in (ctl_client, ctl_server, front, back):
                sock.close()
            if self.curve_server is not None:
                self.curve_server.close()
            self.ctx.term()
            log.info("event=relay_stopped")
        return 0

    @staticmethod
    def _proxy(front: zmq.Socket, back: zmq.Socket, control: zmq.Socket) -> None:
        try:
            zmq.proxy_steerable(front, back, None, control)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as e:
            log.error("event=relay_proxy_failed error=%s", e)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()
