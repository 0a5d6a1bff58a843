"""Gap filling from the vehicle's history service (issue #17).

PUB/SUB forgets what a viewer missed: a link down, a full queue, a late start, its own restart.
The daemon's status header names its history service (``history``) and the masks of the run so
far (``last_mask_seq``), so ``crack-viewer record`` knows, per vehicle and run, which seqs from 0
it does not hold.  Once that vehicle is heard live again, :class:`Backfiller` asks the history
service for the first missing range (a DEALER socket, CurveZMQ with the viewer's own keys as for
SUB), writes each mask that comes back into the recording marked backfilled, with the vehicle's
original time, and asks for the next range until none is left.  What the vehicle no longer has
(its recording rotated away) comes back as lost and is logged with its range
(``event=backfill_lost``), never skipped in silence; what stays missing at the end is logged too
(``event=backfill_missing``).

Plain code (no event loop): ``observe()`` for each live message, ``tick()`` from the app's
periodic tick, which polls the sockets without blocking.  Replies are checked before anything
is written: each mask must decode (``edge.wire.decode_header``) and be the vehicle, run and seq
asked for.

:func:`mask_key` tells a recording's reader where a mask belongs: ``(run_id, seq)``, or None for
any other message, so ``edge.recording.read_in_seq_order`` can put backfilled masks back in place.
"""
from __future__ import annotations

import bisect
import ipaddress
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from edge import history, wire

log = logging.getLogger(__name__)

ASK_MAX = 4096             # seqs asked for in one request (the vehicle answers in batches anyway)
REPLY_TIMEOUT_S = 15.0     # a request unanswered this long is asked again (a duplicate is not written twice)
RETRY_S = 2.0              # after a reply that brought nothing new
MAX_RUNS = 256             # (vehicle, run) pairs tracked; the least recently heard is forgotten beyond
MAX_RANGES = 100_000       # intervals per run: a hostile seq pattern cannot grow the state without bound
REPLIES_PER_TICK = 32
MAX_SOCKETS = 64           # history endpoints connected at once (a vehicle cannot make us open more)
LOST_LOG_FIRST, LOST_LOG_EVERY = 20, 100   # backfill_lost lines per run; the summary gives every range
WILDCARD_HOSTS = {"*", "0.0.0.0", "::", ""}


def mask_key(frames: list[bytes]) -> tuple[str, int] | None:
    """``(run_id, seq)`` of a mask message, None for anything else (never raises)."""
    key = mask_ident(frames)
    return None if key is None else (key[1], key[2])


def mask_ident(frames: list[bytes]) -> tuple[str, str, int] | None:
    """``(vehicle_id, run_id, seq)`` of a mask message, None for anything else (never raises)."""
    if not frames or not bytes(frames[0][:5]) == wire.MASK_PREFIX.encode():
        return None
    try:
        kind, vehicle, header = wire.decode_header(frames)
    except Exception:  # noqa: BLE001 - a recording may hold any bytes; they keep their file position
        return None
    if kind != "mask" or not isinstance(header.get("run_id"), str) or not isinstance(header.get("seq"), int):
        return None
    return vehicle, header["run_id"], header["seq"]


class SeqRanges:
    """A set of seqs as sorted, disjoint, non-adjacent [a, b] intervals (masks arrive mostly in order)."""

    def __init__(self) -> None:
        self.r: list[list[int]] = []

    def __len__(self) -> int:
        return len(self.r)

    def count(self) -> int:
        return sum(b - a + 1 for a, b in self.r)

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self.r, [seq, float("inf")]) - 1
        return i >= 0 and self.r[i][0] <= seq <= self.r[i][1]

    def add(self, a: int, b: int | None = None) -> None:
        b = a if b is None else b
        r = self.r
        if r and r[-1][0] <= a <= r[-1][1] + 1:  # the common case: the next seq of the run
            r[-1][1] = max(r[-1][1], b)
            return
        if not r or a > r[-1][1] + 1:
            r.append([a, b])
            return
        lo = bisect.bisect_left([x[1] for x in r], a - 1)
        hi = lo
        while hi < len(r) and r[hi][0] <= b + 1:
            hi += 1
        if lo == hi:
            r.insert(lo, [a, b])
        else:
            r[lo:hi] = [[min(a, r[lo][0]), max(b, r[hi - 1][1])]]

    def gaps(self, lo: int, hi: int, also: "SeqRanges | None" = None) -> list[tuple[int, int]]:
        """The parts of [lo, hi] in neither this set nor ``also``."""
        spans = sorted(itertools.chain(self.r, also.r if also is not None else []))
        out, pos = [], lo
        for a, b in spans:
            if b < pos:
                continue
            if a > hi:
                break
            if a > pos:
                out.append((pos, min(a - 1, hi)))
            pos = max(pos, b + 1)
            if pos > hi:
                break
        if pos <= hi:
            out.append((pos, hi))
        return out


@dataclass
class RunTrack:
    """What the recording holds of one vehicle's run, and where its history service is."""
    vehicle_id: str
    run_id: str
    held: SeqRanges = field(default_factory=SeqRanges)
    lost: SeqRanges = field(default_factory=SeqRanges)
    last_live: int = -1                 # highest seq received live
    first_live: int = -1                # lowest seq received live
    last_mask_seq: int = -1             # highest seq the vehicle says it published (status)
    history: str | None = None          # the endpoint to ask (resolved), None: no history service
    last_heard: float = -1e18           # monotonic time of the last live message
    outstanding: tuple[int, float] | None = None   # (request id, sent at)
    next_try: float = 0.0
    backfilled: int = 0
    busy: bool = False                  # asking now (for the "drained" log line)
    lost_lines: int = 0
    overflow: bool = False

    def upto(self) -> int:
        return max(self.last_live, self.last_mask_seq)

    def missing(self, from_start: bool = True) -> list[tuple[int, int]]:
        lo = 0 if from_start else self.first_live
        return self.held.gaps(lo, self.upto(), self.lost) if self.upto() >= 0 and lo >= 0 else []


class Backfiller:
    """Tracks seqs per (vehicle, run) and fills the gaps from the vehicles' history services.

    ``sink(frames, t_recv)`` takes each mask that comes back (checked first): ``record`` writes it
    into its recording marked backfilled, ``watch`` counts it in its figures.  ``curve`` (edge.security.ClientCurve) and ``connect`` (the viewer's endpoints, in the order of
    its server keys) choose the keys of each history endpoint; ``enabled=False`` only tracks and
    reports what is missing.  ``from_start``: every seq from 0 (a recording); otherwise only the gaps
    after the first mask received live (a watch counts what it missed, not the run before it).
    """

    def __init__(self, sink: Callable[[list[bytes], float], None], connect: Iterable[str], curve: Any = None,
                 stale_after_s: float = 3.0, enabled: bool = True, from_start: bool = True) -> None:
        import zmq

        self.sink = sink
        self.connect = list(connect)
        self.curve = curve
        self.stale_after_s = stale_after_s
        self.enabled = enabled
        self.from_start = from_start
        self.tracks: dict[tuple[str, str], RunTrack] = {}
        self.ctx = zmq.Context()
        self.socks: dict[str, Any] = {}
        self.by_request: dict[int, tuple[str, str]] = {}
        self.ids = itertools.count(1)
        self.backfilled = 0
        self.bad_replies = 0
        self._warned: set[str] = set()

    # ------------------------------------------------------------ what the recording holds

    def load_existing(self, path: str | Path) -> int:
        """Note the masks an existing recording folder already holds (a recorder restarted onto it)."""
        from edge.recording import RecordingError, read_records

        n = 0
        try:
            for rec in read_records(path, on_bad_file=lambda p, e: log.warning(
                    "event=backfill_skip_file path=%s error=%s", p, e)):
                ident = mask_ident(rec.frames)
                if ident is not None:
                    self._track(ident[0], ident[1]).held.add(ident[2])
                    n += 1
        except RecordingError as e:  # an empty new folder: nothing held yet
            log.debug("event=backfill_no_existing path=%s error=%s", path, e)
        if n:
            log.info("event=backfill_existing path=%s masks=%d runs=%d", path, n, len(self.tracks))
        return n

    def observe(self, frames: list[bytes], now: float | None = None) -> None:
        """One live message, as recorded: a mask adds its seq, a status what the vehicle holds."""
        now = time.monotonic() if now is None else now
        if not frames:
            return
        topic = bytes(frames[0][:7])
        if topic.startswith(wire.MASK_PREFIX.encode()):
            ident = mask_ident(frames)
            if ident is None:
                return
            t = self._track(ident[0], ident[1])
            self._add_held(t, ident[2])
            t.last_live = max(t.last_live, ident[2])
            t.first_live = ident[2] if t.first_live < 0 else min(t.first_live, ident[2])
            t.last_heard = now
        elif topic.startswith(wire.STATUS_PREFIX.encode()):
            try:
                kind, vehicle, h = wire.decode_header(frames)
            except wire.WireError:
                return
            t = self._track(vehicle, h["run_id"])
            t.last_heard = now
            last = h.get("last_mask_seq")
            if isinstance(last, int):
                t.last_mask_seq = max(t.last_mask_seq, last)
            endpoint = h.get("history")
            t.history = self._resolve(endpoint) if isinstance(endpoint, str) and endpoint else None

    def _track(self, vehicle: str, run: str) -> RunTrack:
        key = (vehicle, run)
        t = self.tracks.get(key)
        if t is None:
            if len(self.tracks) >= MAX_RUNS:
                oldest = min(self.tracks, key=lambda k: self.tracks[k].last_heard)
                self._report_missing(self.tracks.pop(oldest))
            t = self.tracks[key] = RunTrack(vehicle, run)
        return t

    def _add_held(self, t: RunTrack, seq: int) -> None:
        if len(t.held) >= MAX_RANGES and seq not in t.held:
            if not t.overflow:
                t.overflow = True
                log.warning("event=backfill_overflow vehicle=%s run_id=%s ranges=%d (no longer tracked)",
                            t.vehicle_id, t.run_id, len(t.held))
            return
        t.held.add(seq)

    def _resolve(self, endpoint: str) -> str | None:
        """The endpoint to connect to: a wildcard host (``tcp://0.0.0.0:5556``) takes the host we subscribe to."""
        scheme, _, rest = endpoint.partition("://")
        if scheme not in ("tcp", "ipc") or not rest:
            return None
        if scheme != "tcp":
            return endpoint
        host, _, port = rest.rpartition(":")
        if host.strip("[]") not in WILDCARD_HOSTS:
            return endpoint
        hosts = {_host(c) for c in self.connect if c.startswith("tcp://")}
        if len(hosts) != 1:
            if endpoint not in self._warned:
                self._warned.add(endpoint)
                log.warning("event=backfill_endpoint_ambiguous history=%s connect=%s: set the daemon's "
                            "history.advertise to an address viewers reach", endpoint, ",".join(self.connect))
            return None
        return f"tcp://{hosts.pop()}:{port}"

    # ------------------------------------------------------------ asking

    def tick(self, now: float | None = None) -> None:
        """Read the replies that arrived, then ask for the next missing range where a link is up."""
        if not self.enabled:
            return
        now = time.monotonic() if now is None else now
        self._read_replies(now)
        for t in list(self.tracks.values()):
            self._maybe_ask(t, now)

    def _maybe_ask(self, t: RunTrack, now: float) -> None:
        if t.history is None or now - t.last_heard > self.stale_after_s or now < t.next_try:
            return
        if t.outstanding is not None:
            if now - t.outstanding[1] < REPLY_TIMEOUT_S:
                return
            log.info("event=backfill_timeout vehicle=%s run_id=%s id=%d", t.vehicle_id, t.run_id, t.outstanding[0])
            self.by_request.pop(t.outstanding[0], None)
            t.outstanding = None
        gaps = t.missing(self.from_start)
        if not gaps:
            if t.busy:
                t.busy = False
                log.info("event=backfill_drained vehicle=%s run_id=%s held=%d backfilled=%d lost=%d upto=%d",
                         t.vehicle_id, t.run_id, t.held.count(), t.backfilled, t.lost.count(), t.upto())
            return
        a, b = gaps[0]
        b = min(b, a + ASK_MAX - 1)
        sock = self._socket(t.history)
        if sock is None:
            t.next_try = now + RETRY_S
            return
        import zmq

        rid = next(self.ids)
        try:
            sock.send_multipart(history.encode_request(history.Request(rid, t.run_id, a, b)), zmq.NOBLOCK)
        except zmq.Again:  # not connected yet: the DEALER queue is full
            t.next_try = now + RETRY_S
            return
        if not t.busy:
            t.busy = True
            log.info("event=backfill_start vehicle=%s run_id=%s missing=%s history=%s", t.vehicle_id, t.run_id,
                     _fmt(gaps), t.history)
        t.outstanding = (rid, now)
        self.by_request[rid] = (t.vehicle_id, t.run_id)

    def _socket(self, endpoint: str) -> Any:
        sock = self.socks.get(endpoint)
        if sock is not None:
            return sock
        import zmq

        from viewer.sockets import MAX_RECEIVE_FRAME_BYTES, apply_defaults

        if len(self.socks) >= MAX_SOCKETS:
            if "max_sockets" not in self._warned:
                self._warned.add("max_sockets")
                log.warning("event=backfill_too_many_endpoints max=%d history=%s (not connected)", MAX_SOCKETS, endpoint)
            return None

        sock = apply_defaults(self.ctx.socket(zmq.DEALER))
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 4)
        sock.setsockopt(zmq.RCVHWM, 4)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_RECEIVE_FRAME_BYTES)  # per frame, as on the SUB socket
        if self.curve is not None:
            index = self._key_index(endpoint)
            if index is None:
                sock.close(0)
                if endpoint not in self._warned:
                    self._warned.add(endpoint)
                    log.warning("event=backfill_no_key history=%s: no server key is known for this host", endpoint)
                return None
            self.curve.apply(sock, index)
        sock.connect(endpoint)
        log.info("event=backfill_connect history=%s curve=%s", endpoint, "yes" if self.curve is not None else "no")
        self.socks[endpoint] = sock
        return sock

    def _key_index(self, endpoint: str) -> int | None:
        if len(self.curve.servers) == 1:
            return 0
        host = _host(endpoint)
        for i, c in enumerate(self.connect):
            if _host(c) == host:
                return i
        return None

    # ------------------------------------------------------------ answers

    def _read_replies(self, now: float) -> None:
        import zmq

        for endpoint, sock in list(self.socks.items()):
            for _ in range(REPLIES_PER_TICK):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_reply(frames, now)

    def _on_reply(self, frames: list[bytes], now: float) -> None:
        try:
            batch = history.decode_reply(frames)
        except history.HistoryError as e:
            self._bad(f"{e.reason}: {e}")
            return
        key = self.by_request.pop(batch.id, None)
        t = self.tracks.get(key) if key is not None else None
        if t is None or t.run_id != batch.run_id:
            return  # an answer to a request given up on (or forged): its masks come again if still missing
        if t.outstanding is not None and t.outstanding[0] == batch.id:
            t.outstanding = None
        wrote = 0
        for r in batch.records:
            ident = mask_ident(r.frames)
            if ident != (t.vehicle_id, t.run_id, r.seq):
                self._bad(f"record seq={r.seq} is {ident} not ({t.vehicle_id}, {t.run_id}, {r.seq})")
                continue
            if r.seq in t.held:
                continue
            self.sink(r.frames, r.t_recv)  # a RecordingError stops the app, as a live write's does
            self._add_held(t, r.seq)
            wrote += 1
        t.backfilled += wrote
        self.backfilled += wrote
        for a, b, why in batch.lost:
            for ga, gb in t.held.gaps(a, b, t.lost):
                t.lost.add(ga, gb)
                t.lost_lines += 1
                if t.lost_lines <= LOST_LOG_FIRST or t.lost_lines % LOST_LOG_EVERY == 0:
                    log.warning("event=backfill_lost vehicle=%s run_id=%s from_seq=%d to_seq=%d count=%d reason=%s",
                                t.vehicle_id, t.run_id, ga, gb, gb - ga + 1, why)
        if batch.last_seq is not None:
            t.last_mask_seq = max(t.last_mask_seq, batch.last_seq)
        # More of the range is waiting: ask at once.  Nothing new came: give the vehicle a moment.
        t.next_try = now if (wrote or batch.lost) else now + RETRY_S

    def _bad(self, detail: str) -> None:
        self.bad_replies += 1
        if self.bad_replies <= 20 or self.bad_replies % 1000 == 0:
            log.warning("event=backfill_bad_reply count=%d detail=%r", self.bad_replies, detail[:160])

    # ------------------------------------------------------------ the end

    def pending(self) -> bool:
        """True while some run with a reachable history service still misses seqs."""
        return any(t.history is not None and t.missing(self.from_start) for t in self.tracks.values())

    def close(self) -> None:
        for t in self.tracks.values():
            self._report_missing(t)
        for sock in self.socks.values():
            sock.close(0)
        self.socks.clear()
        self.ctx.term()

    @staticmethod
    def into(writer: Any) -> Callable[[list[bytes], float], None]:
        """The sink that writes into a recording, marked backfilled, at the vehicle's time."""
        return lambda frames, t_recv: writer.write(frames, t_recv, backfilled=True)

    def _report_missing(self, t: RunTrack) -> None:
        gaps = t.missing(self.from_start)
        if gaps:
            log.warning("event=backfill_missing vehicle=%s run_id=%s count=%d ranges=%s history=%s",
                        t.vehicle_id, t.run_id, sum(b - a + 1 for a, b in gaps), _fmt(gaps), t.history or "none")
        if t.backfilled or len(t.lost):
            log.info("event=backfill_summary vehicle=%s run_id=%s backfilled=%d lost=%d lost_ranges=%s", t.vehicle_id,
                     t.run_id, t.backfilled, t.lost.count(), _fmt([(a, b) for a, b in t.lost.r]) or "-")


def _host(endpoint: str) -> str:
    rest = endpoint.partition("://")[2]
    host = rest.rpartition(":")[0] if ":" in rest else rest
    host = host.strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _fmt(gaps: list[tuple[int, int]], most: int = 8) -> str:
    text = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in gaps[:most])
    return text + (f",...(+{len(gaps) - most})" if len(gaps) > most else "")
