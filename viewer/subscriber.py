"""Receiving: a SUB socket on many endpoints (asyncio) and the decode step that never raises.

:class:`Decoder` is plain code (no event loop): it turns raw frames into ``wire.Message`` or
counts and skips them by reason.  :class:`Subscriber` is the thin asyncio adapter around a SUB
socket; it also watches the socket's connect/disconnect events so the log tells an operator
when a vehicle's link went down and came back.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from abc import ABC, abstractmethod
from collections import Counter
from typing import Any, Callable, Iterable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from edge import wire
from viewer.sockets import subscriber

log = logging.getLogger(__name__)

# One log line per bad message, but a flood of garbage must not flood the log: after this many
# lines for one reason, only every LOG_EVERY-th is logged (with the running count).
LOG_FIRST = 20
LOG_EVERY = 1000


class Decoder:
    """``decode(frames)`` -> Message, or None after counting the message under its reason."""

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected: Counter[str] = Counter()

    def __call__(self, frames: list[bytes]) -> wire.Message | None:
        try:
            msg = wire.decode(frames)
        except wire.WireError as e:
            self._reject(e.reason, str(e), frames)
            return None
        except Exception as e:  # noqa: BLE001 - a decoder bug must not kill the viewer; it is logged
            self._reject("decoder_error", f"{type(e).__name__}: {e}", frames)
            return None
        self.accepted += 1
        return msg

    def reject(self, reason: str, detail: str) -> None:
        """Count a problem found after decoding (e.g. a frame JPEG that does not decode)."""
        self._reject(reason, detail, None)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def _reject(self, reason: str, detail: str, frames: list[bytes] | None) -> None:
        self.rejected[reason] += 1
        n = self.rejected[reason]
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            topic = bytes(frames[0][:64]).decode("utf-8", "replace") if frames else ""
            log.warning("event=bad_message reason=%s count=%d topic=%r detail=%r", reason, n, topic, detail[:160])


_EVENTS = {
    zmq.EVENT_CONNECTED: "link_up",
    zmq.EVENT_DISCONNECTED: "link_down",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed",
}


class Subscriber:
    """A SUB socket connected to ``endpoints``; ``run(on_frames)`` delivers until cancelled."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoints: Iterable[str], topics: Iterable[str] = ("",),
                 rcvhwm: int = wire.Defaults.RCVHWM, curve: Any = None) -> None:
        self.endpoints = list(endpoints)
        self.sock = subscriber(ctx, self.endpoints, topics, rcvhwm, curve=curve)
        self._monitor = self.sock.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        self.links_up = 0
        self.links_down = 0
        self.received = 0

    async def run(self, on_frames: Callable[[list[bytes], float], None]) -> None:
        """Receive forever, calling ``on_frames(frames, t_recv_wall)``; stop by cancelling."""
        monitor = asyncio.ensure_future(self._watch_links())
        try:
            while True:
                frames = await self.sock.recv_multipart()
                self.received += 1
                on_frames(frames, time.time())
        finally:
            monitor.cancel()
            try:
                await monitor
            except asyncio.CancelledError:
                pass

    async def _watch_links(self) -> None:
        while True:
            try:
                event = parse_monitor_message(await self._monitor.recv_multipart())
            except zmq.ZMQError:
                return
            name = _EVENTS.get(event["event"])
            if name == "link_up":
                self.links_up += 1
            elif name == "link_down":
                self.links_down += 1
            endpoint = event["endpoint"].decode(errors="replace") if isinstance(event["endpoint"], bytes) else event["endpoint"]
            log.info("event=%s endpoint=%s", name or event["event"], endpoint)

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(0)
        self.sock.close()


class SubscriberApp(ABC):
    """The lifecycle that `watch` and `record` share: ``serve()`` = ``startup()``, ``main_loop()``,
    ``shutdown()``; SIGINT/SIGTERM only set flags; one receiver task feeds ``on_frames``.

    Subclasses open their own outputs in ``startup()`` around :meth:`open_subscriber`, close them in
    ``shutdown()`` after :meth:`close_subscriber`, and implement ``main_loop()`` and ``on_frames()``.
    """

    cfg: Any

    def __init__(self) -> None:
        self.should_exit = False
        self.force_exit = False
        self.exit_code = 0

    async def serve(self) -> int:
        self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        return self.exit_code

    @abstractmethod
    def startup(self) -> None:
        """Open the outputs and call :meth:`open_subscriber`."""

    @abstractmethod
    async def main_loop(self) -> None:
        """The periodic tick, until ``should_exit``."""

    async def shutdown(self) -> None:
        await self.close_subscriber()

    @abstractmethod
    def on_frames(self, frames: list[bytes], t_wall: float) -> None:
        """One message as received (the receiver task calls it)."""

    def on_signal(self) -> None:
        if self.should_exit:
            self.force_exit = True  # a second signal: do not wait for anything more
        self.should_exit = True

    def open_subscriber(self) -> None:
        """The SUB socket on every endpoint, the signal flags, and the receiver task."""
        self.ctx = zmq.asyncio.Context()
        self.sub = Subscriber(self.ctx, self.cfg.connect, self.cfg.subscribe, self.cfg.rcvhwm,
                              curve=self.cfg.client_curve())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal)
        self.receiver = asyncio.ensure_future(self.sub.run(self.on_frames))

    async def close_subscriber(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        self.receiver.cancel()
        # Its error, if any, was reported by main_loop; gather only waits for the task to end.
        await asyncio.gather(self.receiver, return_exceptions=True)
        self.sub.close()
        self.ctx.term()
