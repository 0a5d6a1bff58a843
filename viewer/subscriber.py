"""Receiving: a SUB socket on many endpoints (asyncio) and the decode step that never raises.

:class:`Decoder` is plain code (no event loop): it turns raw frames into ``wire.Message`` or
counts and skips them by reason.  :class:`LinkWatch` is plain code too: it watches a SUB or XSUB
socket's connect/disconnect events, so the log tells an operator when a vehicle's link went down
and came back, and connects again where ZeroMQ gave up (the relay uses it as it is).
:class:`Subscriber` is the thin asyncio adapter around a watched SUB socket.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from common import exits
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


_MONITORED = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
              | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_PROTOCOL_ERRORS = {v: k[len("PROTOCOL_ERROR_"):].lower() for k, v in vars(zmq).items()
                    if k.startswith("PROTOCOL_ERROR_") and isinstance(v, int)}
# libzmq answers a DISCONNECTED it will retry with CONNECT_RETRIED at once; one it gave up on (a
# protocol error: a frame over MAXMSGSIZE, a refused handshake) gets nothing.  After this long
# without a retry the endpoint is connected again by hand.
GAVE_UP_AFTER_S = 0.5
RECONNECT_AFTER_S = wire.Defaults.RECONNECT_IVL_MAX_MS / 1000
REFUSED_RETRY_S = 30.0      # a refused endpoint is tried again this rarely (a key may be added)
NO_DETAIL_REFUSED_AFTER = 3  # failed handshakes in a row, without any answer, that count as a refusal
REFUSAL_LOG_EVERY_S = 60.0


def handshake_failure(event: int, value: int, curve: bool = True) -> tuple[str, bool]:
    """(reason, definitive) of a failed handshake from the monitor's event and value.

    ``definitive`` means the server answered "no" (ZAP status, wrong mechanism, bad crypto);
    a hang-up without detail (errno) only counts after NO_DETAIL_REFUSED_AFTER in a row.
    """
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        # The value is the ZAP status code of the server's authenticator.
        what = {300: "temporary failure", 400: "key not authorised", 500: "server's authenticator failed"}
        return f"auth_refused(zap={value}: {what.get(value, 'refused')})", value != 300
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        name = _PROTOCOL_ERRORS.get(value, f"{value:#x}")
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "mechanism_mismatch(one side uses CurveZMQ, the other does not: --server-key/--key)", True
        return f"protocol_error({name})", True
    # No detail: the server hung up in the middle of the handshake (errno), which is what a CURVE
    # server does with a client that used the wrong server key, or (when it reads our greeting
    # first) with a plaintext client.
    why = os.strerror(value) if 0 < value < 200 else str(value)
    hint = "is --server-key this endpoint's public key?" if curve else \
        "the endpoint may require CurveZMQ: --server-key and --key"
    return f"server_hung_up(errno={value} {why}: {hint})", False


@dataclass
class Link:
    """What the monitor told about one endpoint."""
    endpoint: str
    index: int
    up: bool = False
    handshakes: int = 0          # succeeded
    failures_in_row: int = 0
    refused: str = ""            # the reason, while the endpoint refuses this viewer
    refusals: int = 0
    down_at: float | None = None  # a DISCONNECTED not yet followed by a retry
    retry_at: float | None = None  # when to connect again by hand
    logged: dict[str, tuple[float, int]] = field(default_factory=dict)


class LinkWatch:
    """A SUB or XSUB socket on ``endpoints`` and the watch over its links, in plain sync code.

    The socket's monitor (``self.monitor``) is read by the owner (an asyncio task for
    :class:`Subscriber`, the relay's poll loop), which passes each message to :meth:`on_monitor`
    and calls :meth:`tick` now and then.  It logs link up/down, a WARNING naming why a handshake
    failed, and connects again by hand an endpoint libzmq gave up on (it does after a protocol
    error, e.g. a peer sending a frame over MAXMSGSIZE).  One home for watch, record and relay.
    """

    def __init__(self, ctx: zmq.Context, endpoints: Iterable[str], topics: Iterable[str] = ("",),
                 rcvhwm: int = wire.Defaults.RCVHWM, kind: int = zmq.SUB, curve: Any = None) -> None:
        self.endpoints = list(endpoints)
        self.curve = curve
        monitors: list[zmq.Socket] = []
        # The monitor is attached before the first connect: a handshake refused at once is seen.
        self.sock = subscriber(ctx, self.endpoints, topics, rcvhwm, kind=kind, curve=curve,
                               before_connect=lambda s: monitors.append(s.get_monitor_socket(_MONITORED)))
        self.monitor = monitors[0]
        self.links = {ep: Link(ep, i) for i, ep in enumerate(self.endpoints)}
        self.links_up = 0
        self.links_down = 0
        self.reconnects = 0

    @property
    def refusals(self) -> int:
        return sum(link.refusals for link in self.links.values())

    def all_refused(self) -> bool:
        """Every endpoint refuses this viewer now (its last handshake failed definitively)."""
        return all(link.refused for link in self.links.values())

    def refusal_reasons(self) -> str:
        return "; ".join(f"{ln.endpoint}: {ln.refused}" for ln in self.links.values() if ln.refused)

    def on_monitor(self, frames: list[bytes], now: float) -> None:
        """One message read from ``self.monitor``."""
        event = parse_monitor_message(frames)
        self.on_event(int(event["event"]), int(event["value"]), event["endpoint"], now)

    def _link(self, endpoint: bytes | str) -> Link | None:
        ep = endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint)
        link = self.links.get(ep)
        if link is None and len(self.links) == 1:  # libzmq may name it differently (resolved)
            link = next(iter(self.links.values()))
        return link

    def on_event(self, event: int, value: int, endpoint: bytes | str, now: float) -> None:
        """One monitor event (plain code, no I/O besides logging)."""
        link = self._link(endpoint)
        ep = link.endpoint if link is not None else str(endpoint)
        if event == zmq.EVENT_CONNECTED:
            self.links_up += 1
            log.info("event=link_up endpoint=%s", ep)
        elif event == zmq.EVENT_DISCONNECTED:
            self.links_down += 1
            log.info("event=link_down endpoint=%s", ep)
            if link is not None:
                link.up, link.down_at = False, now
        elif event == zmq.EVENT_CONNECT_RETRIED:
            if link is not None:
                link.down_at = None  # libzmq reconnects by itself
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if link is not None:
                if link.refused:
                    log.info("event=handshake_accepted endpoint=%s (refused before: %s)", ep, link.refused)
                link.up, link.handshakes, link.failures_in_row, link.refused = True, link.handshakes + 1, 0, ""
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                       zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            reason, definitive = handshake_failure(event, value, self.curve is not None)
            if link is None:
                log.warning("event=handshake_failed endpoint=%s reason=%s", ep, reason)
                return
            link.failures_in_row += 1
            if definitive or link.failures_in_row >= NO_DETAIL_REFUSED_AFTER:
                if not link.refused:
                    link.refusals += 1
                link.refused = reason
            self._log_failure(link, reason, now)

    def _log_failure(self, link: Link, reason: str, now: float) -> None:
        # A wrong server key fails every reconnect interval for ever: one line per reason a minute.
        first, count = link.logged.get(reason, (-1e18, 0))
        if now - first < REFUSAL_LOG_EVERY_S:
            link.logged[reason] = (first, count + 1)
            return
        link.logged[reason] = (now, 0)
        again = f" failed_since_last_line={count}" if count else ""
        log.warning("event=handshake_failed endpoint=%s reason=%s%s", link.endpoint, reason, again)

    def tick(self, now: float) -> None:
        """Connect again by hand to endpoints libzmq gave up on."""
        for link in self.links.values():
            if link.down_at is not None and now - link.down_at >= GAVE_UP_AFTER_S:
                link.down_at = None
                link.retry_at = now + (REFUSED_RETRY_S if link.refused else RECONNECT_AFTER_S)
            if link.retry_at is not None and now >= link.retry_at:
                link.retry_at = None
                self._reconnect(link)

    def _reconnect(self, link: Link) -> None:
        try:
            self.sock.disconnect(link.endpoint)
        except zmq.ZMQError:
            pass  # libzmq already forgot it
        if self.curve is not None:
            self.curve.apply(self.sock, link.index)
        try:
            self.sock.connect(link.endpoint)
        except zmq.ZMQError as e:
            log.error("event=reconnect_failed endpoint=%s error=%s", link.endpoint, e)
            return
        self.reconnects += 1
        log.info("event=reconnect endpoint=%s why=%s", link.endpoint,
                 "refused" if link.refused else "zeromq_gave_up(protocol error, e.g. a frame over MAXMSGSIZE)")

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)
        self.sock.close()


class Subscriber(LinkWatch):
    """A SUB socket connected to ``endpoints``; ``run(on_frames)`` delivers until cancelled.

    Its links are watched as :class:`LinkWatch` says, from an asyncio task beside the receiver.
    """

    def __init__(self, ctx: zmq.asyncio.Context, endpoints: Iterable[str], topics: Iterable[str] = ("",),
                 rcvhwm: int = wire.Defaults.RCVHWM, curve: Any = None) -> None:
        super().__init__(ctx, endpoints, topics, rcvhwm, curve=curve)
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
                if await self.monitor.poll(100):
                    self.on_monitor(await self.monitor.recv_multipart(), time.monotonic())
            except zmq.ZMQError:
                return
            self.tick(time.monotonic())


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
        if self.exit_code == exits.OK and self.sub.received == 0 and self.sub.refusals:
            # It ran to its end (duration, signal) having seen nothing because it was turned away.
            log.error("event=refused received=0 reasons=%r", self.sub.refusal_reasons() or "refused earlier")
            self.exit_code = exits.REFUSED
        return self.exit_code

    def check_refused(self) -> None:
        """Called by each tick: every endpoint refuses this viewer, so nothing will ever come."""
        if not self.should_exit and self.sub.all_refused():
            log.error("event=refused received=%d reasons=%r", self.sub.received, self.sub.refusal_reasons())
            self.exit_code = exits.REFUSED
            self.should_exit = True

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
