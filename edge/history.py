"""The vehicle's history service (issue #17): what the daemon recorded, served again on request.

The stream is PUB/SUB, so what the vehicle publishes while a viewer is cut off, restarting or not
yet connected is gone for that viewer.  When the daemon records locally (``--record DIR``) it can
also answer "run R, mask seq A to B" from that recording (``--history ENDPOINT``): the messages
byte for byte as they were published, with the time each was recorded.  ``docs/protocol.md``
("History service") documents the messages; this module is their code, for both sides.

* :class:`HistoryIndex` is the recording writer's ``observer``: seq -> (file, offset) of this
  run's masks, dropped file by file as the writer rotates them away.  16 bytes per mask, no
  message bytes held.
* :class:`HistoryServer` owns a ROUTER socket in the daemon's context (CurveZMQ like the PUB
  socket, same authorised viewers) and serves it from its own thread: one request, one bounded
  batch (``history.batch_records`` / ``batch_bytes``), replies paced to ``history.rate_bytes_per_s``
  so the live masks keep their rate on the link.  A viewer pulls the next batch by asking again.
* ``encode_*`` / ``decode_*``: the messages, pure functions.  Anything malformed raises
  :class:`HistoryError`; the server drops such a request without an answer (and counts it), so
  garbage costs the daemon a parse and nothing else.
"""
from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge import wire

log = logging.getLogger(__name__)

VERSION = 1
REQUEST = b"history-request"
REPLY = b"history-reply"
MAX_REQUEST_BYTES = 1024          # a request is ~120 bytes of JSON
MAX_BATCH_RECORDS = 256           # the most masks a reply may carry (the decoder's bound)
MAX_REPLY_HEADER_BYTES = 64 * 1024
MAX_LOST_RANGES = 64
MAX_RECORD_FRAMES = 4             # a mask message has 3 or 4 frames
LOG_FIRST, LOG_EVERY = 20, 1000   # refused requests: the first lines, then every 1000th


class HistoryError(ValueError):
    """A history message that does not follow the protocol; ``reason`` is a short stable tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ------------------------------------------------------------------ messages

@dataclass(frozen=True)
class Request:
    """Masks ``from_seq`` to ``to_seq`` (inclusive) of run ``run_id``; ``id`` is echoed in the reply."""
    id: int
    run_id: str
    from_seq: int
    to_seq: int


@dataclass
class HistoryRecord:
    seq: int
    t_recv: float            # when the vehicle recorded it, just after publishing (s since the epoch)
    frames: list[bytes]


@dataclass
class Batch:
    """One reply: ``from_seq`` .. ``to_seq`` covered, each seq either in ``records`` or in ``lost``.

    ``lost``: (from, to, why), why one of ``rotated`` (the vehicle deleted that part of its recording
    for room), ``not_recorded``, ``unreadable`` (damaged on disk), ``unknown_run`` (not this daemon's
    run).  ``next_seq``: where the asked range continues (ask again from there); None when this
    reply ends it, or the vehicle holds nothing further yet.
    ``first_seq`` / ``last_seq``: what the vehicle holds of the run now (None: nothing).
    """
    id: int
    run_id: str
    from_seq: int
    to_seq: int
    records: list[HistoryRecord] = field(default_factory=list)
    lost: list[tuple[int, int, str]] = field(default_factory=list)   # (from, to, why)
    next_seq: int | None = None
    first_seq: int | None = None
    last_seq: int | None = None


def _is_seq(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < wire.MAX_INT


def _is_opt_seq(v: Any) -> bool:
    return v is None or _is_seq(v)


def encode_request(req: Request) -> list[bytes]:
    body = {"v": VERSION, "id": req.id, "run_id": req.run_id, "from_seq": req.from_seq, "to_seq": req.to_seq}
    return [REQUEST, json.dumps(body, separators=(",", ":")).encode()]


def decode_request(frames: list[bytes]) -> Request:
    """A request's frames (after the ROUTER's identity frame); HistoryError for anything else."""
    if len(frames) != 2:
        raise HistoryError("frame_count", f"{len(frames)} frames")
    if bytes(frames[0]) != REQUEST:
        raise HistoryError("bad_kind", repr(bytes(frames[0][:32])))
    raw = bytes(frames[1])
    if len(raw) > MAX_REQUEST_BYTES:
        raise HistoryError("too_large", f"request of {len(raw)} bytes")
    return Request(*_range_head(_parse(raw)))


def _range_head(body: dict[str, Any]) -> tuple[int, str, int, int]:
    """The fields a request and a reply share (v, id, run_id, from_seq..to_seq), checked once for both.

    Each refusal names the field and (cut short: a reply header may be 64 KiB) the value it held.
    """
    if body.get("v") != VERSION:
        raise HistoryError("unknown_version", repr(body.get("v"))[:32])
    rid, run, a, b = body.get("id"), body.get("run_id"), body.get("from_seq"), body.get("to_seq")
    if not _is_seq(rid):
        raise HistoryError("bad_field", f"id={rid!r}"[:48])
    if not isinstance(run, str) or not wire.RUN_ID_RE.fullmatch(run):
        raise HistoryError("bad_field", f"run_id={run!r}"[:48])
    if not (_is_seq(a) and _is_seq(b)) or a > b:
        raise HistoryError("bad_field", f"from_seq={a!r} to_seq={b!r}"[:96])
    return rid, run, a, b


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        body = wire.parse_json(raw)
    except wire.WireError as e:
        raise HistoryError("bad_json", str(e)) from None
    if not isinstance(body, dict):
        raise HistoryError("bad_json", "not an object")
    return body


def encode_reply(batch: Batch) -> list[bytes]:
    head = {"v": VERSION, "id": batch.id, "run_id": batch.run_id, "from_seq": batch.from_seq,
            "to_seq": batch.to_seq, "next_seq": batch.next_seq, "first_seq": batch.first_seq,
            "last_seq": batch.last_seq, "lost": [list(r) for r in batch.lost],
            "records": [[r.seq, r.t_recv, len(r.frames)] for r in batch.records]}
    frames = [REPLY, json.dumps(head, separators=(",", ":"), allow_nan=False).encode()]
    for r in batch.records:
        frames.extend(r.frames)
    return frames


def decode_reply(frames: list[bytes]) -> Batch:
    """A reply's frames, each field and count checked; the record frames are not decoded here."""
    if len(frames) < 2 or bytes(frames[0]) != REPLY:
        raise HistoryError("bad_kind", f"{len(frames)} frames")
    raw = bytes(frames[1])
    if len(raw) > MAX_REPLY_HEADER_BYTES:
        raise HistoryError("too_large", f"reply header of {len(raw)} bytes")
    h = _parse(raw)
    rid, run, a, b = _range_head(h)
    for name in ("next_seq", "first_seq", "last_seq"):
        if not _is_opt_seq(h.get(name)):
            raise HistoryError("bad_field", name)
    nxt = h.get("next_seq")
    if nxt is not None and nxt <= b:
        raise HistoryError("bad_field", f"next_seq={nxt} within the batch")
    lost, recs = h.get("lost"), h.get("records")
    if not isinstance(lost, list) or len(lost) > MAX_LOST_RANGES:
        raise HistoryError("bad_field", "lost")
    ranges = []
    for r in lost:
        if not (isinstance(r, list) and len(r) == 3 and _is_seq(r[0]) and _is_seq(r[1]) and a <= r[0] <= r[1] <= b
                and isinstance(r[2], str) and len(r[2]) <= 32):
            raise HistoryError("bad_field", "lost range")
        ranges.append((r[0], r[1], r[2]))
    if not isinstance(recs, list) or len(recs) > MAX_BATCH_RECORDS:
        raise HistoryError("bad_field", "records")
    out, pos = [], 2
    for r in recs:
        if not (isinstance(r, list) and len(r) == 3 and _is_seq(r[0]) and a <= r[0] <= b
                and isinstance(r[1], (int, float)) and not isinstance(r[1], bool)
                and isinstance(r[2], int) and not isinstance(r[2], bool) and 2 <= r[2] <= MAX_RECORD_FRAMES):
            raise HistoryError("bad_field", "record entry")
        if pos + r[2] > len(frames):
            raise HistoryError("frame_count", f"{len(frames)} frames, the header lists more")
        out.append(HistoryRecord(r[0], float(r[1]), [bytes(f) for f in frames[pos:pos + r[2]]]))
        pos += r[2]
    if pos != len(frames):
        raise HistoryError("frame_count", f"{len(frames)} frames, the header lists {pos}")
    return Batch(rid, run, a, b, out, ranges, nxt, h.get("first_seq"), h.get("last_seq"))


# ------------------------------------------------------------------ the index

class HistoryIndex:
    """Where each mask of run ``run_id`` lies in the daemon's recording (the writer's observer).

    Called by the writer on the publish thread, read by the history thread: one lock.  Per file,
    two arrays (seq, offset) in writing order; a rotated-away file takes its masks with it.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._prefix = wire.MASK_PREFIX.encode()
        self._files: dict[Path, tuple[array, array]] = {}
        self._lock = threading.Lock()

    def written(self, path: Path, offset: int, frames: list[bytes], t_recv: float) -> None:
        if len(frames) < 2 or not bytes(frames[0][:len(self._prefix)]) == self._prefix:
            return
        try:
            header = json.loads(bytes(frames[1]))  # our own message: encoded by edge.wire a moment ago
            seq = header["seq"]
        except (ValueError, KeyError, TypeError):
            return
        if header.get("run_id") != self.run_id or not _is_seq(seq):
            return
        with self._lock:
            seqs, offsets = self._files.setdefault(Path(path), (array("q"), array("q")))
            seqs.append(seq)
            offsets.append(offset)

    def deleted(self, path: Path) -> None:
        with self._lock:
            self._files.pop(Path(path), None)

    def span(self) -> tuple[int | None, int | None]:
        """(first, last) seq held, or (None, None)."""
        with self._lock:
            held = [(s[0], s[-1]) for s, _ in self._files.values() if len(s)]
        if not held:
            return None, None
        return min(a for a, _ in held), max(b for _, b in held)

    def lookup(self, from_seq: int, to_seq: int, limit: int) -> list[tuple[int, Path, int]]:
        """Up to ``limit`` (seq, file, offset) with from_seq <= seq <= to_seq, in seq order."""
        out: list[tuple[int, Path, int]] = []
        with self._lock:
            for path, (seqs, offsets) in self._files.items():
                if not len(seqs) or seqs[-1] < from_seq or seqs[0] > to_seq:
                    continue
                i = bisect.bisect_left(seqs, from_seq)
                while i < len(seqs) and seqs[i] <= to_seq and len(out) < limit:
                    out.append((seqs[i], path, offsets[i]))
                    i += 1
        out.sort()
        return out[:limit]


# ------------------------------------------------------------------ the server

class RateLimit:
    """A token bucket in bytes: ``take(n)`` says how long to wait before sending n bytes."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.t = float(burst), time.monotonic()

    def take(self, n: int) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class HistoryServer:
    """The ROUTER socket and the thread that answers it; the socket is used only by that thread.

    ``open()`` binds (the caller turns a failure into a start-up error), ``start()`` starts serving,
    ``stop()`` ends the thread and closes the socket.  Counters go into the status header.
    """

    POLL_MS = 100

    def __init__(self, ctx: Any, cfg: Any, index: HistoryIndex, curve: Any = None,
                 recording: Any = None) -> None:
        self.ctx, self.cfg, self.index, self.curve = ctx, cfg, index, curve
        # ``recording()`` False: the daemon's recording has stopped (disk full), so what lies beyond
        # the index will never be recorded and is answered as lost, not as "not yet".
        self.recording = recording if recording is not None else (lambda: True)
        self.sock: Any = None
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.limit = RateLimit(cfg.rate_bytes_per_s, cfg.rate_bytes_per_s)  # a burst of one second at most
        # A batch never takes more than ~2 s of the pace, so a viewer hears back well within its timeout.
        self.batch_bytes = max(1, min(cfg.batch_bytes, 2 * cfg.rate_bytes_per_s))
        self.requests = 0
        self.refused: dict[str, int] = {}
        self.served = 0          # masks sent
        self.dropped_replies = 0
        self._reauth = threading.Event()

    @property
    def endpoint(self) -> str:
        return self.cfg.endpoint

    def open(self) -> None:
        """Create and bind the ROUTER (CurveZMQ first when keys are set); zmq.ZMQError on a failed bind."""
        import zmq

        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)             # an unsent history reply is worth nothing at exit
        sock.setsockopt(zmq.SNDHWM, self.cfg.send_hwm)
        sock.setsockopt(zmq.RCVHWM, 64)
        sock.setsockopt(zmq.SNDTIMEO, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES * 4)  # a peer sending a big frame is cut off
        sock.setsockopt(zmq.HEARTBEAT_IVL, wire.Defaults.HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, wire.Defaults.HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, wire.Defaults.HEARTBEAT_TTL_MS)
        if self.curve is not None:
            self.curve.attach(sock)
        try:
            sock.bind(self.cfg.endpoint)
        except zmq.ZMQError:
            sock.close(0)
            raise
        self.sock = sock

    def start(self) -> None:
        self.thread = threading.Thread(target=self._serve, name="history", daemon=True)
        self.thread.start()
        log.info("event=history_serving endpoint=%s batch_records=%d batch_bytes=%d rate_bytes_per_s=%d",
                 self.cfg.endpoint, self.cfg.batch_records, self.cfg.batch_bytes, self.cfg.rate_bytes_per_s)

    def reauthenticate(self) -> None:
        """After a key was revoked: cut every connection (done on the history thread) so each passes ZAP again."""
        self._reauth.set()

    def stop(self, timeout: float = 2.0) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout)
        if self.sock is not None and (self.thread is None or not self.thread.is_alive()):
            self.sock.close(0)
            self.sock = None

    def status(self) -> dict[str, Any]:
        return {"requests": self.requests, "served": self.served, "refused": sum(self.refused.values()),
                "dropped_replies": self.dropped_replies}

    # ------------------------------------------------------------ the thread

    def _serve(self) -> None:
        import zmq

        sock = self.sock
        while not self.stop_event.is_set():
            if self._reauth.is_set() and self.curve is not None:
                self._reauth.clear()
                self.curve.reauthenticate(sock)
            try:
                if not sock.poll(self.POLL_MS, zmq.POLLIN):
                    continue
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            except zmq.ZMQError as e:
                if self.stop_event.is_set():
                    return
                log.error("event=history_socket_error error=%s", e)
                time.sleep(0.1)
                continue
            try:
                self._handle(sock, frames)
            except Exception as e:  # noqa: BLE001 - one bad request (or a bug) must never stop the service
                log.exception("event=history_request_failed error=%r", e)

    def _handle(self, sock: Any, frames: list[bytes]) -> None:
        import zmq

        if len(frames) < 2:
            return self._refuse("frame_count", "no identity")
        identity, body = frames[0], frames[1:]
        try:
            req = decode_request(body)
        except HistoryError as e:
            return self._refuse(e.reason, str(e))
        self.requests += 1
        batch, size = self.batch(req)
        wait = self.limit.take(size)
        if wait > 0:
            self.stop_event.wait(wait)  # pacing: the live stream keeps its share of the link
        try:
            sock.send_multipart([identity, *encode_reply(batch)], zmq.NOBLOCK)
            self.served += len(batch.records)
        except zmq.Again:
            self.dropped_replies += 1  # the viewer's queue is full or it left: it asks again
        log.debug("event=history_reply id=%d run_id=%s from_seq=%d to_seq=%d records=%d lost=%s bytes=%d",
                  req.id, req.run_id, batch.from_seq, batch.to_seq, len(batch.records), batch.lost, size)

    def _refuse(self, reason: str, detail: str) -> None:
        n = self.refused[reason] = self.refused.get(reason, 0) + 1
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            log.warning("event=history_request_refused reason=%s count=%d detail=%r", reason, n, detail[:120])

    def batch(self, req: Request) -> tuple[Batch, int]:
        """The reply to ``req`` and its bytes of masks: at most batch_records masks and ~batch_bytes
        (and two seconds' worth of ``rate_bytes_per_s``)."""
        from edge.recording import read_record_at

        first, last = self.index.span()
        out = Batch(req.id, req.run_id, req.from_seq, req.to_seq, first_seq=first, last_seq=last)
        if req.run_id != self.index.run_id:
            out.lost = [(req.from_seq, req.to_seq, "unknown_run")]
            return out, 0
        if first is None or last is None or req.from_seq > last:
            if not self.recording():
                out.lost = [(req.from_seq, req.to_seq, "not_recorded")]
            return out, 0  # not recorded yet: nothing to give, nothing lost (next_seq None)
        a, b = req.from_seq, min(req.to_seq, last)
        covered, size = a - 1, 0
        if a < first:
            covered = min(b, first - 1)
            _lose(out, a, covered, "rotated")  # the recording's oldest files were deleted for room
        if covered < b:
            limit = self.cfg.batch_records
            found = self.index.lookup(covered + 1, b, limit)
            stopped = False
            for seq, path, offset in found:
                if (out.records and size >= self.batch_bytes) or len(out.lost) >= MAX_LOST_RANGES - 2:
                    stopped = True
                    break
                if seq > covered + 1:  # seqs the recording never got (a failed write stopped it)
                    _lose(out, covered + 1, seq - 1, "not_recorded")
                covered = seq
                rec = read_record_at(path, offset)
                if rec is None:  # rotated away since the lookup, or damaged on disk
                    _lose(out, seq, seq, "rotated" if not Path(path).exists() else "unreadable")
                    continue
                out.records.append(HistoryRecord(seq, rec.t_recv, rec.frames))
                size += sum(len(f) for f in rec.frames)
            if not stopped and len(found) < limit and covered < b:
                _lose(out, covered + 1, b, "not_recorded")
                covered = b
        if covered == b < req.to_seq and not self.recording() and len(out.lost) < MAX_LOST_RANGES:
            _lose(out, b + 1, req.to_seq, "not_recorded")
            covered = req.to_seq
        out.to_seq = covered
        out.next_seq = covered + 1 if covered < min(req.to_seq, last) else None
        return out, size


def _lose(out: Batch, a: int, b: int, reason: str) -> None:
    if out.lost and out.lost[-1][1] + 1 == a and out.lost[-1][2] == reason:
        out.lost[-1] = (out.lost[-1][0], b, reason)
    else:
        out.lost.append((a, b, reason))
