"""`crack-viewer relay`: many daemons to many viewers through one XSUB -> XPUB forwarding loop.

A control room connects once, to the relay, instead of to every vehicle.  Subscriptions flow
upstream through the loop, so a viewer that asks for ``mask/truck-7`` only gets that topic.
The loop runs in a thread; the main thread waits for a signal and stops it through a control
socket, so SIGTERM is answered at once.  It is a poll loop rather than ``zmq.proxy_steerable``
because it also reads the XSUB's monitor: libzmq gives a daemon up for good after a protocol
error (a frame over MAXMSGSIZE), and the subscriber's :class:`LinkWatch` connects it again.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import zmq

from common import exits
from viewer.config import ViewerConfig
from viewer.sockets import publisher
from viewer.subscriber import LOG_EVERY, LOG_FIRST, LinkWatch

log = logging.getLogger(__name__)

POLL_MS = 100      # the longest the loop sleeps: LinkWatch.tick runs at least this often
BATCH = 256        # messages moved per socket per turn, so one busy side cannot starve the others


class RelayApp:
    def __init__(self, cfg: ViewerConfig) -> None:
        self.cfg = cfg
        self.stop = threading.Event()

    def serve(self) -> int:
        self.ctx = zmq.Context()
        # Security on both sides: a CURVE client of the daemons, a CURVE server (own authorised
        # folder, same key pair) for the viewers.
        self.up = LinkWatch(self.ctx, self.cfg.connect, rcvhwm=self.cfg.rcvhwm, kind=zmq.XSUB,
                            curve=self.cfg.client_curve())
        front = self.up.sock
        self.curve_server = None
        if self.cfg.relay.authorized_keys is not None:
            from edge.security import CurveServer

            assert self.cfg.key is not None, "checked by ViewerConfig.require"
            self.curve_server = CurveServer(self.cfg.key, self.cfg.relay.authorized_keys, setting="relay")
        try:
            back = publisher(self.ctx, self.cfg.relay.bind, kind=zmq.XPUB, curve_server=self.curve_server)
        except OSError:
            self.up.close()
            if self.curve_server is not None:
                self.curve_server.close()
            self.ctx.term()
            raise
        ctl_addr = f"inproc://relay-control-{id(self)}"
        ctl_server = self.ctx.socket(zmq.PAIR)
        ctl_server.bind(ctl_addr)
        ctl_client = self.ctx.socket(zmq.PAIR)
        ctl_client.connect(ctl_addr)
        self.forwarded = self.subscriptions = self.dropped = 0
        self.failed = False
        self.refused = ""  # set by the loop when every daemon turns the relay away
        thread = threading.Thread(target=self._proxy, args=(back, ctl_server), name="relay-proxy", daemon=True)
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
            for sock in (ctl_client, ctl_server, back):
                sock.close()
            self.up.close()
            if self.curve_server is not None:
                self.curve_server.close()
            self.ctx.term()
            log.info("event=relay_stopped forwarded=%d subscriptions=%d dropped=%d reconnects=%d",
                     self.forwarded, self.subscriptions, self.dropped, self.up.reconnects)
        if self.refused:
            # Nothing will ever come (a key must be authorised first): say so with a status a unit
            # can stop restarting on, as a viewer does, instead of relaying silence.
            log.error("event=refused forwarded=%d reasons=%r", self.forwarded, self.refused)
            return exits.REFUSED
        return exits.SOFTWARE if self.failed else exits.OK

    def _proxy(self, back: zmq.Socket, control: zmq.Socket) -> None:
        try:
            self._loop(back, control)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as e:
            self.failed = True
            log.error("event=relay_proxy_failed error=%s", e)

    def _loop(self, back: zmq.Socket, control: zmq.Socket) -> None:
        """Masks front -> back, subscriptions back -> front, monitor events, until TERMINATE."""
        front, monitor = self.up.sock, self.up.monitor
        poller = zmq.Poller()
        for sock in (front, back, control, monitor):
            poller.register(sock, zmq.POLLIN)
        while True:
            ready = dict(poller.poll(POLL_MS))
            if control in ready and control.recv() == b"TERMINATE":
                return
            now = time.monotonic()
            if monitor in ready:
                for _ in range(BATCH):
                    try:
                        self.up.on_monitor(monitor.recv_multipart(zmq.NOBLOCK), now)
                    except zmq.Again:
                        break
            if back in ready:
                self.subscriptions += self._move(back, front, "up")
            if front in ready:
                self.forwarded += self._move(front, back, "down")
            self.up.tick(now)
            if self.up.all_refused():
                self.refused = self.up.refusal_reasons()
                return

    def _move(self, src: zmq.Socket, dst: zmq.Socket, direction: str) -> int:
        """Up to BATCH waiting messages, one at a time (memory is bounded by the sockets' HWMs).

        Sending never blocks: an XPUB drops for a viewer whose queue is full by itself, and a send
        that would block anyway (a full pipe) is counted and logged as a drop, not waited for.
        """
        moved = 0
        for _ in range(BATCH):
            try:
                frames = src.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                dst.send_multipart(frames, zmq.NOBLOCK, copy=False)
                moved += 1
            except zmq.Again:
                self.dropped += 1
                if self.dropped <= LOG_FIRST or self.dropped % LOG_EVERY == 0:
                    log.warning("event=relay_drop direction=%s count=%d", direction, self.dropped)
        return moved

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()
