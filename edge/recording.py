"""Append-only recordings of ZeroMQ messages that survive a crash and rotate by size.

Used by ``crack-viewer record`` and by the daemon's "nothing lost" option; ``docs/recording.md``
describes the bytes.  A recording is a folder of files ``<prefix>-<NNNNNN>.crec``; each file is

* a 16-byte header: ``b"CRACKREC"``, format version (u32 LE), flags (u32 LE, 0);
* then records, each self-delimiting:
  ``b"RECd"`` | payload length (u32 LE) | CRC32 of the payload (u32 LE) | payload,
  payload = t_recv (f64 LE, seconds since the epoch) | frame count (u16 LE) | flags (u16 LE) |
  for each frame: length (u32 LE) | bytes.  Flag bit 0 (``FLAG_BACKFILLED``): the message was
  filled in later from the vehicle's own recording, and t_recv is the vehicle's original time.

The file header is a hint, not a gate: a damaged header (a flipped byte) is logged and the
records behind it are still read, found by their own magic and CRC.

Every record goes to the kernel in one unbuffered ``write`` on an ``O_APPEND`` descriptor, so a
``kill -9`` loses at most the record being written; the reader stops quietly at a torn tail and
skips (with a log line) a damaged record in the middle by searching for the next valid one.
:func:`scan_file` reports each file's good, damaged and torn records (``crack-viewer verify``).

A full disk (ENOSPC, EDQUOT) raises :class:`RecordingDiskFull`: the partial record is cut off
again, the writer stops, and the caller decides (the daemon logs it once and keeps streaming).
"""
from __future__ import annotations

import errno
import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILE_MAGIC = b"CRACKREC"
FILE_HEADER = struct.Struct("<8sII")          # magic, version, flags
RECORD_MAGIC = b"RECd"
RECORD_HEADER = struct.Struct("<4sII")        # magic, payload length, crc32(payload)
PAYLOAD_HEAD = struct.Struct("<dHH")          # t_recv, frame count, flags (count < 2**16)
FLAG_BACKFILLED = 0x0001
KNOWN_FLAGS = FLAG_BACKFILLED
FRAME_LEN = struct.Struct("<I")
SUFFIX = ".crec"
# A length beyond this is damage, not data: never allocate it.
MAX_RECORD_BYTES = 256 * 2**20

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class RecordingError(Exception):
    """A recording that cannot be written or read (the message names the file)."""


class RecordingNotFound(RecordingError):
    """The recording file or folder does not exist."""


class RecordingDiskFull(RecordingError):
    """The disk (or quota) is full: the writer has stopped; the last record was cut off again."""


@dataclass(frozen=True)
class Record:
    """One message as it was received: its frames verbatim and the receiver's wall-clock time.

    ``backfilled``: filled in later from the vehicle's recording (t_recv is then the vehicle's time).
    """
    t_recv: float
    frames: list[bytes]
    backfilled: bool = False


def encode_record(frames: list[bytes], t_recv: float, backfilled: bool = False) -> bytes:
    """The bytes of one record (header + payload), as written to disk."""
    if len(frames) > 0xFFFF:
        raise RecordingError(f"message of {len(frames)} frames exceeds the 65535-frame record limit")
    parts = [PAYLOAD_HEAD.pack(float(t_recv), len(frames), FLAG_BACKFILLED if backfilled else 0)]
    for f in frames:
        b = bytes(f)
        parts.append(FRAME_LEN.pack(len(b)))
        parts.append(b)
    payload = b"".join(parts)
    if len(payload) > MAX_RECORD_BYTES:
        raise RecordingError(f"message of {len(payload)} bytes exceeds the {MAX_RECORD_BYTES}-byte record limit")
    return RECORD_HEADER.pack(RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _decode_payload(payload: bytes) -> Record | None:
    if len(payload) < PAYLOAD_HEAD.size:
        return None
    t_recv, count, flags = PAYLOAD_HEAD.unpack_from(payload, 0)
    if flags & ~KNOWN_FLAGS:
        return None
    pos, frames = PAYLOAD_HEAD.size, []
    for _ in range(count):
        if pos + FRAME_LEN.size > len(payload):
            return None
        (n,) = FRAME_LEN.unpack_from(payload, pos)
        pos += FRAME_LEN.size
        if pos + n > len(payload):
            return None
        frames.append(payload[pos:pos + n])
        pos += n
    return Record(t_recv, frames, bool(flags & FLAG_BACKFILLED)) if pos == len(payload) else None


_NAME = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{6,})" + re.escape(SUFFIX) + "$")


def _files(directory: Path, prefix: str | None = None) -> list[tuple[int, Path]]:
    out = []
    for p in directory.glob(f"*{SUFFIX}"):
        m = _NAME.match(p.name)
        if m and (prefix is None or m["prefix"] == prefix):
            out.append((m["prefix"], int(m["index"]), p))
    return [(i, p) for _, i, p in sorted(out)]


class RecordingWriter:
    """Writes records to ``directory/<prefix>-NNNNNN.crec``, rotating by size, capping the total.

    A new writer never appends to an existing file: it starts the next index, so a file torn by
    a crash stays as it was.  When the files of this prefix exceed ``max_total_bytes``, the oldest
    are deleted (never the one being written).
    """

    def __init__(self, directory: str | Path, prefix: str = "rec", max_file_bytes: int = 64 * 2**20,
                 max_total_bytes: int = 1 * 2**30, observer: Any = None) -> None:
        if max_file_bytes <= FILE_HEADER.size:
            raise ValueError(f"max_file_bytes={max_file_bytes} is smaller than a file header")
        if max_total_bytes < max_file_bytes:
            raise ValueError(f"max_total_bytes={max_total_bytes} is smaller than max_file_bytes={max_file_bytes}")
        if "/" in prefix or not prefix:
            raise ValueError(f"prefix {prefix!r} must be a plain, non-empty file name part")
        self.directory = Path(directory)
        self.prefix = prefix
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.records = 0
        self.bytes_written = 0
        # ``observer.written(path, offset, frames, t_recv)`` after each record and
        # ``observer.deleted(path)`` after a rotation: the history index follows the writer.
        self.observer = observer
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._stopped: str | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error(e, f"cannot create {self.directory}") from e
        existing = _files(self.directory, prefix)
        self._next_index = existing[-1][0] + 1 if existing else 0

    @property
    def path(self) -> Path | None:
        """The file being written now (None before the first record)."""
        return self._path

    def write(self, frames: list[bytes], t_recv: float, backfilled: bool = False) -> None:
        """Append one message; raises RecordingDiskFull on ENOSPC, RecordingError on other failures."""
        if self._stopped:
            raise RecordingError(f"recording in {self.directory} has stopped: {self._stopped}")
        data = encode_record(frames, t_recv, backfilled)
        if self._fd is not None and self._size + len(data) > self.max_file_bytes and self._size > FILE_HEADER.size:
            self._close_file()
        if self._fd is None:
            self._open_next()
        offset = self._size
        self._append(data)
        self.records += 1
        self.bytes_written += len(data)
        if self.observer is not None:
            assert self._path is not None
            self.observer.written(self._path, offset, frames, t_recv)
        self._enforce_total()

    def close(self) -> None:
        """Flush to disk and close; safe to call twice."""
        self._close_file()
        if not self._stopped:
            self._stopped = "closed"

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _error(self, e: OSError, what: str) -> RecordingError:
        if e.errno in _DISK_FULL:
            self._stopped = f"disk full ({what})"
            return RecordingDiskFull(f"{what}: {os.strerror(e.errno)}; recording stopped")
        return RecordingError(f"{what}: {e}")

    def _open_next(self) -> None:
        path = self.directory / f"{self.prefix}-{self._next_index:06d}{SUFFIX}"
        self._next_index += 1
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except OSError as e:
            raise self._error(e, f"cannot create {path}") from e
        self._fd, self._path, self._size = fd, path, 0
        self._append(FILE_HEADER.pack(FILE_MAGIC, FORMAT_VERSION, 0))

    def _append(self, data: bytes) -> None:
        assert self._fd is not None and self._path is not None
        view, start = memoryview(data), self._size
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self._size += n
        except OSError as e:
            # Cut the partial record off so the file ends on a whole record.
            try:
                os.ftruncate(self._fd, start)
                self._size = start
            except OSError:
                pass
            err = self._error(e, f"writing {self._path}")
            if isinstance(err, RecordingDiskFull):
                self._close_file()
            raise err from e

    def _close_file(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except OSError as e:
            log.warning("event=recording_fsync_failed path=%s error=%s", self._path, e)
        finally:
            os.close(fd)

    def _enforce_total(self) -> None:
        files = _files(self.directory, self.prefix)
        sizes = {p: _size(p) for _, p in files}
        total = sum(sizes.values())
        for _, p in files:
            if total <= self.max_total_bytes or p == self._path:
                break
            try:
                p.unlink()
                log.info("event=recording_rotated_out path=%s bytes=%d", p, sizes[p])
                if self.observer is not None:
                    self.observer.deleted(p)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("event=recording_delete_failed path=%s error=%s", p, e)
                break
            total -= sizes[p]


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def recording_files(path: str | Path) -> list[Path]:
    """The files of a recording in reading order: the file itself, or a folder's ``*.crec`` by name."""
    p = Path(path)
    if p.is_dir():
        return [f for _, f in _files(p)]
    if p.exists():
        return [p]
    raise RecordingNotFound(f"{p}: no such recording file or folder")


def read_records(path_or_dir: str | Path, on_bad_file: Any = None) -> Iterator[Record]:
    """Every whole record of one file, or of a folder's rotated files in order.

    A torn last record is ignored; a damaged one in the middle is skipped with a warning; a damaged
    file header is logged and the records behind it are read.  A file with neither a file header
    nor a single record raises RecordingError naming it, or, with ``on_bad_file(path, error)``,
    is handed to it and the next file is read.
    """
    for path in recording_files(path_or_dir):
        try:
            yield from read_file(path)
        except RecordingError as e:
            if on_bad_file is None:
                raise
            on_bad_file(path, e)


def read_file(path: Path) -> Iterator[Record]:
    """The whole records of one file (see :func:`read_records`), with log lines for what was skipped."""
    for _offset, rec in _scan(path):
        yield rec


@dataclass
class FileReport:
    """What :func:`scan_file` found in one file."""
    path: Path
    good: int = 0
    damaged: int = 0          # stretches of bytes skipped between good records
    damaged_bytes: int = 0
    torn: int = 0             # a record cut off at the end (a crash while writing): 0 or 1
    torn_bytes: int = 0
    header: str = "ok"        # "ok", "damaged" (records read anyway), "torn" (file cut inside its header)
    error: str = ""           # the file could not be read at all (not a recording, I/O error)

    @property
    def clean(self) -> bool:
        return not (self.damaged or self.header == "damaged" or self.error)


def scan_file(path: Path, on_record: Any = None) -> FileReport:
    """Read one file to the end, counting good, damaged and torn records; ``on_record(rec)`` for each good one."""
    report = FileReport(Path(path))
    try:
        for _offset, rec in _scan(report.path, report):
            if on_record is not None:
                on_record(rec)
    except RecordingError as e:
        report.error = str(e)
    return report


def _scan(path: Path, report: FileReport | None = None) -> Iterator[tuple[int, Record]]:
    report = report if report is not None else FileReport(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RecordingError(f"{path}: cannot read: {e}") from e
    if len(data) < FILE_HEADER.size and FILE_MAGIC.startswith(data[:8]):
        report.header = "torn"
        return  # torn while writing the header: nothing was recorded yet
    problem = _header_problem(path, data)
    if problem:
        if _resync(data, 0) < 0:
            raise RecordingError(problem)  # no header and no record: not a recording at all
        report.header = "damaged"
        log.warning("event=recording_header_damaged path=%s problem=%r (reading its records anyway)", path, problem)
    pos, end = (FILE_HEADER.size if not problem else 0), len(data)
    while pos < end:
        rec, nxt = _record_at(data, pos)
        if rec is not None:
            report.good += 1
            yield pos, rec
            pos = nxt
            continue
        resync = _resync(data, pos + 1)
        if nxt == -1 and resync < 0:  # runs past the end: the torn tail of a crash
            log.info("event=recording_torn_tail path=%s offset=%d bytes=%d", path, pos, end - pos)
            report.torn, report.torn_bytes = 1, end - pos
            return
        skipped = (resync if resync >= 0 else end) - pos
        if not (problem and pos == 0):  # a damaged header's own bytes are not a damaged record
            report.damaged += 1
            report.damaged_bytes += skipped
            log.warning("event=recording_damaged path=%s offset=%d skipped_bytes=%d", path, pos, skipped)
        if resync < 0:
            return
        pos = resync


def _header_problem(path: Path, data: bytes) -> str:
    if len(data) < FILE_HEADER.size:
        return f"{path}: not a recording (too short)"
    magic, version, _flags = FILE_HEADER.unpack_from(data, 0)
    if magic != FILE_MAGIC:
        return f"{path}: not a recording (magic {magic!r})"
    if version != FORMAT_VERSION:
        return f"{path}: recording format version {version}, this reader knows {FORMAT_VERSION}"
    return ""


def _record_at(data: bytes, pos: int) -> tuple[Record | None, int]:
    """(record, next offset); (None, -1) when it runs past the end; (None, 0) when damaged."""
    if pos + RECORD_HEADER.size > len(data):
        return None, (-1 if RECORD_MAGIC.startswith(data[pos:pos + 4][:4]) else 0)
    magic, length, crc = RECORD_HEADER.unpack_from(data, pos)
    if magic != RECORD_MAGIC or length > MAX_RECORD_BYTES:
        return None, 0
    start = pos + RECORD_HEADER.size
    if start + length > len(data):
        return None, -1
    payload = data[start:start + length]
    if zlib.crc32(payload) != crc:
        return None, 0
    rec = _decode_payload(payload)
    return (rec, start + length) if rec is not None else (None, 0)


def _resync(data: bytes, pos: int) -> int:
    while True:
        pos = data.find(RECORD_MAGIC, pos)
        if pos < 0:
            return -1
        rec, _ = _record_at(data, pos)
        if rec is not None:
            return pos
        pos += 1


def read_record_at(path: Path, offset: int) -> Record | None:
    """The one record at ``offset`` of ``path`` (the history service's reads); None if it is not there."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            head = f.read(RECORD_HEADER.size)
            if len(head) < RECORD_HEADER.size:
                return None
            magic, length, _crc = RECORD_HEADER.unpack(head)
            if magic != RECORD_MAGIC or length > MAX_RECORD_BYTES:
                return None
            data = head + f.read(length)
    except OSError:
        return None
    rec, _ = _record_at(data, 0)
    return rec


def read_in_seq_order(path_or_dir: str | Path, seq_key: Any, on_bad_file: Any = None) -> Iterator[Record]:
    """The records with backfilled ones put back in their place (docs/recording.md, "Backfill").

    ``seq_key(frames)`` gives ``(run_id, seq)`` for a mask message, else None.  Each run keeps the
    place of its first record; in a run, a mask goes by its seq, any other message stays just after
    the live mask it followed.  A mask recorded twice is given once.  Without a backfilled record
    this is plain file order.  Only (key, file, offset) is held per record, never the messages.
    """
    files = recording_files(path_or_dir)
    keys: list[tuple[int, int, int, int, int, int]] = []
    runs: dict[str, int] = {}
    last_seq: dict[str, int] = {}
    any_backfilled, n, current = False, 0, ""
    for fi, path in enumerate(files):
        try:
            scanned = list(_offsets_and_keys(path, seq_key))
        except RecordingError as e:
            if on_bad_file is None:
                raise
            on_bad_file(path, e)
            continue
        for offset, backfilled, key in scanned:
            any_backfilled |= backfilled
            if key is None:  # status or other: after the last live mask of the run last heard from
                rank, seq, sub = runs.setdefault(current, len(runs)), last_seq.get(current, -1), 1
            else:
                run, seq = key
                rank, sub = runs.setdefault(run, len(runs)), 0
                current = run
                if not backfilled:
                    last_seq[run] = seq
            keys.append((rank, seq, sub, n, fi, offset))
            n += 1
    if not any_backfilled:
        yield from read_records(path_or_dir, on_bad_file=lambda p, e: None if on_bad_file else _raise(e))
        return
    keys.sort()
    seen: set[tuple[int, int]] = set()
    for rank, seq, sub, _n, fi, offset in keys:
        if sub == 0:
            if (rank, seq) in seen:
                continue
            seen.add((rank, seq))
        rec = read_record_at(files[fi], offset)
        if rec is not None:
            yield rec


def _offsets_and_keys(path: Path, seq_key: Any) -> Iterator[tuple[int, bool, Any]]:
    for offset, rec in _scan(path):
        yield offset, rec.backfilled, seq_key(rec.frames)


def _raise(e: Exception) -> None:
    raise e
