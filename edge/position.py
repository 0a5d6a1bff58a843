"""Where the vehicle was when each frame was captured: a position source beside the camera.

Kinds (``[position] kind``): ``gpsd`` (its JSON protocol over TCP, our own small client),
``nmea-serial`` (a receiver's device read as a file of NMEA lines), ``nmea-log`` / ``gpx-log``
(a recorded track aligned by time), ``exif`` (the GPS tags of the photos in a folder), ``fixed``
and ``none``.  A live source's receiver thread keeps a bounded ring of timestamped fixes;
:meth:`PositionSource.at` answers from the ring without blocking (bisect: O(log n)), so a lost
fix never stops or slows the masks; the answer says there is none and why (``reason``).

Time rule: live fixes (gpsd, serial) are stamped with the host's wall clock when they arrive, the
clock ``t_capture`` uses (a receiver's own clock or a replay's old timestamps would not match it).
Logs and photos carry their own time (NMEA/GPX timestamps, EXIF DateTimeOriginal, else the file's
mtime); a frame of a file or folder is at ``start_time + t_media + offset_s`` on that clock, its
place in the clip (``Captured.t_media``), so a machine slower than the clip, or one not pacing it,
still puts each frame where it was filmed.  A live camera has no media time: its frames are at
``start_time + (t_capture - first t_capture) + offset_s``.  ``start_time`` defaults to the video
file's mtime.
"""
from __future__ import annotations

import bisect
import calendar
import json
import logging
import math
import socket
import struct
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger("crack-edge.position")

MAX_LINE = 4096          # a longer line from gpsd or a receiver is garbage, dropped
MAX_LOG_FIXES = 2_000_000
MAX_LOG_BYTES = 512 * 2**20
GGA_QUALITY = {0: "none", 1: "3d", 2: "dgps", 3: "dgps", 4: "rtk", 5: "float-rtk", 6: "estimated",
               7: "fixed-config", 8: "estimated"}


class PositionError(ValueError):
    """A position setting or file that cannot be used; the message names it (the daemon exits 78)."""


@dataclass
class Fix:
    t: float                     # epoch seconds on the frames' clock
    lat: float
    lon: float
    alt_m: float | None = None
    speed_mps: float | None = None
    heading_deg: float | None = None
    quality: str = "3d"
    satellites: int | None = None
    segment: int = 0             # a reconnect starts a new one: no line is drawn across the gap


# ------------------------------------------------------------------ NMEA

def nmea_checksum_ok(line: str) -> bool:
    if not line.startswith("$") or "*" not in line:
        return False
    body, _, given = line[1:].rpartition("*")
    calc = 0
    for ch in body:
        calc ^= ord(ch)
    try:
        return int(given[:2], 16) == calc and len(given.strip()) == 2
    except ValueError:
        return False


def _deg(value: str, hemi: str) -> float:
    dot = value.index(".") if "." in value else len(value)
    d = float(value[:dot - 2]) + float(value[dot - 2:]) / 60.0
    if hemi in ("S", "W"):
        d = -d
    if hemi not in ("N", "S", "E", "W"):
        raise ValueError(f"hemisphere {hemi!r}")
    return d


def _tod(hhmmss: str) -> float:
    return int(hhmmss[0:2]) * 3600 + int(hhmmss[2:4]) * 60 + float(hhmmss[4:])


class NmeaParser:
    """GGA, RMC and VTG to fixes; bad checksums and garbage are dropped and counted.

    A fix is emitted per GGA or RMC; the day comes from the last RMC (GGA has only the time of day),
    speed and course from the last RMC/VTG.  ``stamp`` None: use the sentence's own UTC time.
    """

    def __init__(self) -> None:
        self.counts = {"sentences": 0, "bad_checksum": 0, "garbage": 0, "fixes": 0, "no_fix": 0}
        self.day: float | None = None     # epoch of 00:00 UTC of the RMC date
        self.speed: float | None = None
        self.course: float | None = None
        self.alt: float | None = None
        self.quality = "3d"
        self.satellites: int | None = None

    def feed(self, line: str | bytes, stamp: float | None = None) -> Fix | None:
        if isinstance(line, bytes):
            line = line.decode("ascii", "replace")
        line = line.strip()
        if not line:
            return None
        if len(line) > 100 or not line.startswith("$"):
            self.counts["garbage"] += 1
            return None
        if not nmea_checksum_ok(line):
            self.counts["bad_checksum"] += 1
            return None
        fields = line[1:line.rindex("*")].split(",")
        kind = fields[0][2:] if len(fields[0]) == 5 else ""
        try:
            fix = {"GGA": self._gga, "RMC": self._rmc, "VTG": self._vtg}.get(kind, lambda f, s: None)(fields, stamp)
        except (ValueError, IndexError):
            self.counts["garbage"] += 1
            return None
        self.counts["sentences"] += 1
        if fix is not None:
            if not all(math.isfinite(v) for v in (fix.t, fix.lat, fix.lon)) or abs(fix.lat) > 90 or abs(fix.lon) > 180:
                self.counts["garbage"] += 1
                return None
            self.counts["fixes"] += 1
        return fix

    def _time(self, hhmmss: str, stamp: float | None) -> float | None:
        if stamp is not None:
            return stamp
        if self.day is None or not hhmmss:
            return None
        return self.day + _tod(hhmmss)

    def _gga(self, f: list[str], stamp: float | None) -> Fix | None:
        q = int(f[6] or 0)
        self.satellites = int(f[7]) if f[7] else None
        self.alt = float(f[9]) if f[9] else None
        if q == 0 or not f[2]:
            self.counts["no_fix"] += 1
            return None
        self.quality = GGA_QUALITY.get(q, "3d")
        t = self._time(f[1], stamp)
        if t is None:
            return None
        return Fix(t, _deg(f[2], f[3]), _deg(f[4], f[5]), self.alt, self.speed, self.course, self.quality,
                   self.satellites)

    def _rmc(self, f: list[str], stamp: float | None) -> Fix | None:
        if f[9]:
            d = f[9]
            year = 2000 + int(d[4:6]) if int(d[4:6]) < 80 else 1900 + int(d[4:6])
            self.day = float(calendar.timegm((year, int(d[2:4]), int(d[0:2]), 0, 0, 0)))
        self.speed = float(f[7]) * 0.514444 if f[7] else None
        self.course = float(f[8]) % 360.0 if f[8] else None
        if f[2] != "A" or not f[3]:
            self.counts["no_fix"] += 1
            return None
        t = self._time(f[1], stamp)
        if t is None:
            return None
        return Fix(t, _deg(f[3], f[4]), _deg(f[5], f[6]), self.alt, self.speed, self.course, self.quality,
                   self.satellites)

    def _vtg(self, f: list[str], stamp: float | None) -> None:
        if f[1]:
            self.course = float(f[1]) % 360.0
        if len(f) > 7 and f[7]:
            self.speed = float(f[7]) / 3.6
        return None


# ------------------------------------------------------------------ the ring and interpolation

def _lerp_angle(a: float, b: float, w: float) -> float:
    d = ((b - a + 180.0) % 360.0) - 180.0
    return (a + w * d) % 360.0


def _lerp(a: float | None, b: float | None, w: float) -> float | None:
    if a is None or b is None:
        return a if w < 0.5 else b
    return a + w * (b - a)


class FixRing:
    """Time-ordered fixes, bounded; ``around(t)`` by bisect. Writers and readers share one lock held briefly."""

    def __init__(self, maxlen: int = 4096) -> None:
        self.maxlen = maxlen
        self.times: list[float] = []
        self.fixes: list[Fix] = []
        self.lock = threading.Lock()

    def add(self, fix: Fix) -> None:
        with self.lock:
            if self.times and fix.t < self.times[-1]:
                # A jump back in time (receiver reset, clock step): the old track no longer lines up.
                self.times.clear()
                self.fixes.clear()
            self.times.append(fix.t)
            self.fixes.append(fix)
            if len(self.times) > self.maxlen:
                drop = len(self.times) - self.maxlen
                del self.times[:drop], self.fixes[:drop]

    def around(self, t: float) -> tuple[Fix | None, Fix | None, Fix | None]:
        """(the fix before the one before ``t``, the one before, the one at or after), None where there is none."""
        with self.lock:
            i = bisect.bisect_left(self.times, t)
            prev = self.fixes[i - 2] if i > 1 else None
            before = self.fixes[i - 1] if i > 0 else None
            after = self.fixes[i] if i < len(self.fixes) else None
            return prev, before, after

    def last(self) -> Fix | None:
        with self.lock:
            return self.fixes[-1] if self.fixes else None

    def span(self) -> tuple[float, float] | None:
        with self.lock:
            return (self.times[0], self.times[-1]) if self.times else None


def extrapolate(prev: Fix, last: Fix, t: float) -> Fix:
    """Past the newest fix by at most one fix interval: on along the last two fixes' line.

    A live frame is looked up when it is published, a few tens of ms after capture, usually before
    the receiver's next fix has arrived: without this the frame would get the last fix, snapped.
    """
    w = (t - prev.t) / (last.t - prev.t)
    return Fix(t, prev.lat + w * (last.lat - prev.lat), prev.lon + w * (last.lon - prev.lon),
               _lerp(prev.alt_m, last.alt_m, w), last.speed_mps, last.heading_deg, last.quality, last.satellites)


def interpolate(before: Fix | None, after: Fix | None, t: float, max_gap_s: float,
                prev: Fix | None = None) -> tuple[Fix | None, float]:
    """The fix at ``t`` and its age (distance to the nearer fix used); (None, inf) with no fix at all.

    With ``prev`` (the fix before ``before``) and nothing after ``t`` yet, a time within one fix
    interval past ``before`` is extrapolated (see :func:`extrapolate`).
    """
    if (after is None and before is not None and prev is not None and 0 < before.t - prev.t <= max_gap_s
            and t - before.t <= before.t - prev.t and prev.segment == before.segment):
        return extrapolate(prev, before, t), t - before.t
    if (before is not None and after is not None and after.t - before.t <= max_gap_s and after.t > before.t
            and before.segment == after.segment):
        w = (t - before.t) / (after.t - before.t)
        head = None
        if before.heading_deg is not None and after.heading_deg is not None:
            head = _lerp_angle(before.heading_deg, after.heading_deg, w)
        else:
            head = before.heading_deg if after.heading_deg is None else after.heading_deg
        near = before if w < 0.5 else after
        fix = Fix(t, before.lat + w * (after.lat - before.lat), before.lon + w * (after.lon - before.lon),
                  _lerp(before.alt_m, after.alt_m, w), _lerp(before.speed_mps, after.speed_mps, w), head,
                  near.quality, near.satellites)
        return fix, min(t - before.t, after.t - t)
    cands = [f for f in (before, after) if f is not None]
    if not cands:
        return None, math.inf
    near = min(cands, key=lambda f: abs(t - f.t))
    return near, abs(t - near.t)


# ------------------------------------------------------------------ sources

def _r(v: float | None, nd: int) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, nd)


class PositionSource:
    """Base: a ring of fixes and the header fields. Live subclasses run a receiver thread."""

    kind = "none"
    live = True

    def __init__(self, stale_s: float = 2.0, max_gap_s: float = 5.0, ring: int = 4096) -> None:
        self.ring = FixRing(ring)
        self.stale_s = stale_s
        self.max_gap_s = max_gap_s
        self.state = "no_fix"
        self.last_error = ""
        self.fixes = 0
        self.satellites: int | None = None
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.segment = 0
        self.heard = False           # the receiver has said something (a no-fix report included)

    def start(self) -> None:
        if self.live:
            self.thread = threading.Thread(target=self._guarded, name=f"position-{self.kind}", daemon=True)
            self.thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def _guarded(self) -> None:
        try:
            self.run()
        except Exception as e:  # the position must never take the daemon down
            self.state, self.last_error = "disconnected", f"{type(e).__name__}: {e}"
            log.error("event=position_thread_died kind=%s error=%r", self.kind, self.last_error)

    def run(self) -> None:  # pragma: no cover - overridden
        pass

    def add(self, fix: Fix) -> None:
        fix.segment = self.segment
        self.ring.add(fix)
        self.fixes += 1
        if fix.satellites is not None:
            self.satellites = fix.satellites
        self.state, self.last_error = "ok", ""

    def frame_time(self, t_capture: float, t_media: float | None = None) -> float:
        return t_capture   # live fixes are on the host's clock, as t_capture is

    def at(self, t_capture: float, t_media: float | None = None) -> dict[str, Any]:
        """The ``position`` header field for a frame captured at ``t_capture`` (never blocks for long).

        ``t_media``: the frame's place in its file (s), None for a live camera; only a log uses it.
        """
        t = self.frame_time(t_capture, t_media)
        prev, before, after = self.ring.around(t)
        fix, age = interpolate(before, after, t, self.max_gap_s, prev if self.live else None)
        reason = ""
        if fix is None:
            reason = "disconnected" if self.state == "disconnected" else ("no_fix" if self.heard else "no_data")
        elif not self.live and (before is None or after is None) and age > self.stale_s:
            reason = "out_of_log"
        elif age > self.stale_s:
            reason = "disconnected" if self.state == "disconnected" else ("no_fix" if self.state == "no_fix" else "stale")
        out: dict[str, Any] = {"source": self.kind, "fix": not reason, "reason": reason}
        if reason:
            out.update(lat=None, lon=None, alt_m=None, speed_mps=None, heading_deg=None, quality="none",
                       age_s=_r(age, 3) if fix is not None else None)
            return out
        out.update(lat=_r(fix.lat, 8), lon=_r(fix.lon, 8), alt_m=_r(fix.alt_m, 2), speed_mps=_r(fix.speed_mps, 3),
                   heading_deg=None if fix.heading_deg is None else round(fix.heading_deg, 2) % 360.0,
                   quality=fix.quality, age_s=_r(age, 3))
        return out

    def status(self) -> dict[str, Any]:
        last = self.ring.last()
        age = None if last is None or not self.live else _r(max(0.0, time.time() - last.t), 3)
        state = self.state
        if state == "ok" and age is not None and age > self.stale_s:
            state = "stale"
        return {"source": self.kind, "state": state, "last_error": self.last_error[:200], "fixes": self.fixes,
                "satellites": self.satellites, "last_fix_age_s": age}


class FixedSource(PositionSource):
    kind, live = "fixed", False

    def __init__(self, lat: float, lon: float, alt_m: float | None = None, heading_deg: float | None = None) -> None:
        super().__init__()
        self.fix = Fix(0.0, lat, lon, alt_m, None, heading_deg, "fixed-config")
        self.state, self.fixes = "ok", 1

    def at(self, t_capture: float, t_media: float | None = None) -> dict[str, Any]:
        f = self.fix
        return {"source": self.kind, "fix": True, "reason": "", "lat": f.lat, "lon": f.lon, "alt_m": f.alt_m,
                "speed_mps": 0.0, "heading_deg": f.heading_deg, "quality": "fixed-config", "age_s": 0.0}


class _Backoff:
    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi, self.wait = lo, hi, lo

    def reset(self) -> None:
        self.wait = self.lo

    def next(self) -> float:
        w, self.wait = self.wait, min(self.hi, self.wait * 2)
        return w


def _parse_iso(s: str) -> float:
    """'2024-05-01T10:00:00.500Z' -> epoch seconds (UTC)."""
    s = s.strip().replace("Z", "+00:00")
    from datetime import datetime, timezone

    d = datetime.fromisoformat(s)
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return d.timestamp()


class GpsdSource(PositionSource):
    """gpsd's JSON protocol over TCP: ``?WATCH``, then TPV (fixes) and SKY (satellites) lines."""

    kind = "gpsd"

    def __init__(self, host: str, port: int, reconnect_min_s: float = 0.5, reconnect_max_s: float = 5.0,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.host, self.port = host, port
        self.backoff = _Backoff(reconnect_min_s, reconnect_max_s)
        self.state = "disconnected"
        self.reconnects = 0
        self.counts = {"garbage": 0}

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._session()
            except OSError as e:
                self.last_error = f"gpsd {self.host}:{self.port}: {e.strerror or e}"
            if self.stop_event.is_set():
                break
            if self.state != "disconnected":
                log.warning("event=gpsd_lost host=%s port=%d error=%r", self.host, self.port, self.last_error)
            self.state = "disconnected"
            self.reconnects += 1
            self.stop_event.wait(self.backoff.next())

    def _session(self) -> None:
        with socket.create_connection((self.host, self.port), timeout=2.0) as s:
            s.settimeout(1.0)
            s.sendall(b'?WATCH={"enable":true,"json":true}\n')
            log.info("event=gpsd_connected host=%s port=%d", self.host, self.port)
            self.segment += 1
            if self.state == "disconnected":
                self.state = "no_fix"
            buf = b""
            while not self.stop_event.is_set():
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    self.last_error = "gpsd closed the connection"
                    return
                buf += chunk
                *lines, buf = buf.split(b"\n")
                if len(buf) > MAX_LINE:
                    buf = b""
                    self.counts["garbage"] += 1
                for line in lines:
                    self._line(line)

    def _line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            self.counts["garbage"] += 1
            return
        if not isinstance(msg, dict):
            return
        cls = msg.get("class")
        if cls == "SKY":
            used = msg.get("uSat")
            if used is None and isinstance(msg.get("satellites"), list):
                used = sum(1 for s in msg["satellites"] if isinstance(s, dict) and s.get("used"))
            if isinstance(used, int):
                self.satellites = used
        elif cls == "TPV":
            self.heard = True
            self._tpv(msg)

    def _tpv(self, m: dict[str, Any]) -> None:
        mode = m.get("mode", 0)
        lat, lon = m.get("lat"), m.get("lon")
        if mode not in (2, 3) or not isinstance(lat, (int, float)) or not isinstance(lon, (int, float)):
            self.state = "no_fix"
            return
        self.backoff.reset()

        def num(k: str) -> float | None:
            v = m.get(k)
            return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

        status = m.get("status", 1)
        quality = {2: "dgps", 3: "rtk", 4: "float-rtk", 5: "estimated", 6: "estimated", 7: "fixed-config"}.get(
            status, "3d" if mode == 3 else "2d")
        alt = num("altHAE") if num("altMSL") is None else num("altMSL")
        if alt is None:
            alt = num("alt")
        self.add(Fix(time.time(), float(lat), float(lon), alt, num("speed"), num("track"), quality, self.satellites))


class NmeaSerialSource(PositionSource):
    """A receiver's serial device (or a FIFO) read as lines of NMEA; baud set with pyserial when present."""

    kind = "nmea-serial"

    def __init__(self, device: str, baud: int = 9600, reconnect_min_s: float = 0.5, reconnect_max_s: float = 5.0,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.device, self.baud = device, baud
        self.parser = NmeaParser()
        self.backoff = _Backoff(reconnect_min_s, reconnect_max_s)
        self.state = "disconnected"

    def _open(self) -> Any:
        try:
            import serial  # optional: sets the baud rate

            return serial.Serial(self.device, self.baud, timeout=1.0)
        except ImportError:
            return open(self.device, "rb", buffering=0)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                with self._open() as f:
                    self.state = "no_fix"
                    self.segment += 1
                    self._read(f)
            except (OSError, ValueError) as e:
                self.last_error = f"{self.device}: {getattr(e, 'strerror', None) or e}"
            self.state = "disconnected"
            self.stop_event.wait(self.backoff.next())

    def _read(self, f: Any) -> None:
        buf = b""
        is_serial = hasattr(f, "in_waiting")  # pyserial: an empty read is its timeout, not the end
        while not self.stop_event.is_set():
            chunk = f.read(256) if is_serial else f.readline(MAX_LINE)
            if not chunk:
                if is_serial:
                    continue
                self.last_error = f"{self.device}: end of data"
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            buf = buf[-MAX_LINE:]
            for line in lines:
                fix = self.parser.feed(line, stamp=time.time())
                self.heard = self.heard or self.parser.counts["sentences"] > 0
                if fix is not None:
                    self.backoff.reset()
                    self.add(fix)


class LogSource(PositionSource):
    """Fixes known in advance (a log, photos); frames placed on the log's clock."""

    live = False

    def __init__(self, kind: str, path: Path, fixes: list[Fix], start_time: float, offset_s: float = 0.0,
                 **kw: Any) -> None:
        super().__init__(ring=max(1, len(fixes)), **kw)
        self.kind, self.path = kind, path
        for f in sorted(fixes, key=lambda f: f.t):
            self.ring.add(f)
        self.fixes = len(fixes)
        self.state = "ok"
        self.start_time, self.offset_s = start_time, offset_s
        self.first_capture: float | None = None
        self.last_frame: float | None = None   # the latest frame's time on the log's clock
        first, last = self.ring.span() or (0.0, 0.0)
        t0 = start_time + offset_s
        if not fixes or t0 < first - self.max_gap_s or t0 > last + self.max_gap_s:
            raise PositionError(
                f"{path}: the {kind} ({_iso(first)} .. {_iso(last)}) does not overlap the video, which starts at "
                f"{_iso(t0)} (set position.start_time or position.offset_s)")

    def frame_time(self, t_capture: float, t_media: float | None = None) -> float:
        if t_media is not None:
            # A file's frame: where it lies in the clip, however late it was read.
            t = self.start_time + t_media + self.offset_s
        else:
            # A live camera: time passes for the frames as for the log.
            if self.first_capture is None:
                self.first_capture = t_capture
            t = self.start_time + (t_capture - self.first_capture) + self.offset_s
        self.last_frame = t
        return t

    def status(self) -> dict[str, Any]:
        out = super().status()
        first, last = self.ring.span() or (0.0, 0.0)
        if self.last_frame is not None and self.last_frame > last + self.stale_s:
            out["state"] = "out_of_log"
        return out


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _read_bounded(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_LOG_BYTES:
            raise PositionError(f"{path}: larger than {MAX_LOG_BYTES} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise PositionError(f"{path}: position log not found") from None
    except OSError as e:
        raise PositionError(f"{path}: cannot read: {e.strerror}") from None


def read_nmea_log(path: Path) -> tuple[list[Fix], dict[str, int]]:
    parser = NmeaParser()
    fixes: list[Fix] = []
    for line in _read_bounded(path).splitlines():
        fix = parser.feed(line)
        if fix is not None:
            fixes.append(fix)
            if len(fixes) > MAX_LOG_FIXES:
                raise PositionError(f"{path}: more than {MAX_LOG_FIXES} fixes")
    # GGA before the first RMC of a log has no date: those are skipped (no day known).
    return _dedupe(fixes), parser.counts


def _dedupe(fixes: list[Fix]) -> list[Fix]:
    by_t: dict[float, Fix] = {}
    for f in fixes:
        old = by_t.get(f.t)
        if old is not None:  # GGA and RMC of one epoch: keep the one with more fields filled
            f = Fix(f.t, f.lat, f.lon, f.alt_m if f.alt_m is not None else old.alt_m,
                    f.speed_mps if f.speed_mps is not None else old.speed_mps,
                    f.heading_deg if f.heading_deg is not None else old.heading_deg, f.quality,
                    f.satellites if f.satellites is not None else old.satellites)
        by_t[f.t] = f
    return [by_t[t] for t in sorted(by_t)]


def read_gpx(path: Path) -> list[Fix]:
    data = _read_bounded(path)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise PositionError(f"{path}: not valid GPX/XML: {e}") from None
    fixes = []
    for pt in root.iter():
        if not pt.tag.endswith("trkpt"):
            continue
        try:
            lat, lon = float(pt.attrib["lat"]), float(pt.attrib["lon"])
        except (KeyError, ValueError):
            continue
        vals = {c.tag.rsplit("}", 1)[-1]: (c.text or "").strip() for c in pt.iter()}
        if "time" not in vals:
            continue
        try:
            t = _parse_iso(vals["time"])
        except ValueError:
            continue
        ele = float(vals["ele"]) if vals.get("ele") else None
        fixes.append(Fix(t, lat, lon, ele, float(vals["speed"]) if vals.get("speed") else None,
                         float(vals["course"]) % 360 if vals.get("course") else None, "3d"))
        if len(fixes) > MAX_LOG_FIXES:
            raise PositionError(f"{path}: more than {MAX_LOG_FIXES} points")
    return _dedupe(fixes)


# ------------------------------------------------------------------ EXIF GPS (JPEG APP1)

def exif_gps(data: bytes) -> Fix | None:
    """GPS position and time of a JPEG from its APP1 Exif segment (our own TIFF reader); None without GPS."""
    tiff = _app1_tiff(data)
    if tiff is None:
        return None
    end = "<" if tiff[:2] == b"II" else ">"
    if tiff[:2] not in (b"II", b"MM"):
        return None
    ifd0 = _ifd(tiff, end, struct.unpack(end + "I", tiff[4:8])[0])
    gps_off = ifd0.get(0x8825)
    if gps_off is None:
        return None
    gps = _ifd(tiff, end, int(gps_off[0]))
    when = None
    exif_off = ifd0.get(0x8769)
    if exif_off is not None:
        dto = _ifd(tiff, end, int(exif_off[0])).get(0x9003)
        if isinstance(dto, str):
            try:
                when = float(calendar.timegm(time.strptime(dto.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")))
            except ValueError:
                when = None
    try:
        lat = _dms(gps[2]) * (-1 if str(gps.get(1, "N")).startswith("S") else 1)
        lon = _dms(gps[4]) * (-1 if str(gps.get(3, "E")).startswith("W") else 1)
    except (KeyError, TypeError, IndexError, ZeroDivisionError):
        return None
    alt = None
    if 6 in gps:
        alt = float(gps[6][0]) * (-1 if gps.get(5, (0,))[0] == 1 else 1)
    head = float(gps[17][0]) % 360 if 17 in gps else None
    return Fix(when if when is not None else math.nan, lat, lon, alt, None, head, "3d")


def _dms(v: tuple) -> float:
    return float(v[0]) + float(v[1]) / 60.0 + float(v[2]) / 3600.0


def _app1_tiff(data: bytes) -> bytes | None:
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        size = struct.unpack(">H", data[i + 2:i + 4])[0]
        seg = data[i + 4:i + 2 + size]
        if marker == 0xE1 and seg[:6] == b"Exif\x00\x00":
            return seg[6:]
        if marker in (0xDA, 0xD9):
            break
        i += 2 + size
    return None


_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8}


def _ifd(tiff: bytes, end: str, off: int) -> dict[int, Any]:
    out: dict[int, Any] = {}
    if off + 2 > len(tiff):
        return out
    n = min(struct.unpack(end + "H", tiff[off:off + 2])[0], 512)
    for k in range(n):
        e = off + 2 + 12 * k
        if e + 12 > len(tiff):
            break
        tag, typ, count = struct.unpack(end + "HHI", tiff[e:e + 8])
        size = _TYPE_SIZE.get(typ, 0) * count
        if size == 0 or count > 4096:
            continue
        at = e + 8 if size <= 4 else struct.unpack(end + "I", tiff[e + 8:e + 12])[0]
        raw = tiff[at:at + size]
        if len(raw) < size:
            continue
        if typ == 2:
            out[tag] = raw.split(b"\x00")[0].decode("ascii", "replace")
        elif typ in (5, 10):
            fmt = end + ("I" if typ == 5 else "i") * (2 * count)
            v = struct.unpack(fmt, raw)
            out[tag] = tuple(v[2 * j] / v[2 * j + 1] if v[2 * j + 1] else math.nan for j in range(count))
        else:
            fmt = {1: "B", 7: "B", 3: "H", 4: "I", 9: "i"}[typ]
            out[tag] = struct.unpack(end + fmt * count, raw)
    return out


def read_exif_folder(folder: Path) -> list[Fix]:
    if not folder.is_dir():
        raise PositionError(f"{folder}: exif position needs a folder of photos (source.uri)")
    fixes = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in (".jpg", ".jpeg"):
            continue
        try:
            with open(p, "rb") as f:
                fix = exif_gps(f.read(256 * 1024))  # Exif lives at the start of a JPEG
        except (OSError, struct.error):
            continue
        if fix is None:
            continue
        if not math.isfinite(fix.t):
            fix.t = p.stat().st_mtime  # no DateTimeOriginal: the file's time
        fixes.append(fix)
    return _dedupe(fixes)


# ------------------------------------------------------------------ from config

def open_position(cfg: Any, source_uri: str) -> PositionSource | None:
    """The source ``[position]`` asks for (None for ``none``); PositionError names what is wrong."""
    kind = cfg.kind
    tune = {"stale_s": cfg.stale_s, "max_gap_s": cfg.max_gap_s}
    if kind == "none":
        return None
    if kind == "fixed":
        if cfg.lat is None or cfg.lon is None:
            raise PositionError("position.lat and position.lon are needed with kind = 'fixed'")
        return FixedSource(cfg.lat, cfg.lon, cfg.alt_m, cfg.heading_deg)
    if kind == "gpsd":
        return GpsdSource(cfg.host, cfg.port, cfg.reconnect_min_s, cfg.reconnect_max_s, **tune)
    if kind == "nmea-serial":
        if not cfg.device:
            raise PositionError("position.device is needed with kind = 'nmea-serial'")
        return NmeaSerialSource(cfg.device, cfg.baud, cfg.reconnect_min_s, cfg.reconnect_max_s, **tune)
    if kind == "exif":
        folder = Path(source_uri)
        fixes = read_exif_folder(folder)
        start = cfg.start_time if cfg.start_time is not None else (fixes[0].t if fixes else 0.0)
        return LogSource("exif", folder, fixes, _start(start), cfg.offset_s, **tune)
    if not cfg.path:
        raise PositionError(f"position.path is needed with kind = {kind!r}")
    path = Path(cfg.path)
    fixes = read_nmea_log(path)[0] if kind == "nmea-log" else read_gpx(path)
    if cfg.start_time is not None:
        start = _start(cfg.start_time)
    else:
        try:
            start = Path(source_uri).stat().st_mtime
        except OSError:
            raise PositionError(f"position.start_time is needed: {source_uri} has no file time") from None
    return LogSource(kind, path, fixes, start, cfg.offset_s, **tune)


def _start(v: float | str) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return _parse_iso(v)
    except ValueError:
        raise PositionError(f"position.start_time: {v!r} is not an ISO 8601 time or epoch seconds") from None
