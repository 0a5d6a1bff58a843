"""Read and rewrite an ONNX file's ``metadata_props`` without the ``onnx`` package.

The daemon needs the model card embedded in the ONNX file on machines that only have a runtime
(``onnx`` is a trainer dependency), so this walks the top level of the ``ModelProto`` protobuf
itself: a sequence of (tag, value) fields, of which ``metadata_props`` (field 14) are
``StringStringEntryProto {1: key, 2: value}``.  A rewrite keeps every other field's bytes as they
were, so :func:`graph_sha256` (the hash of everything but the metadata) stays the same when only
the card changes: the identity of the weights and graph, apart from the facts written about them.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

METADATA_FIELD = 14
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class MetadataError(ValueError):
    """The file is not a protobuf ModelProto this reader understands."""


def _varint(buf: bytes | mmap.mmap, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise MetadataError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes | mmap.mmap, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """(field number, value start, value end, field start) of each field in buf[start:end]."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        first = pos
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _, nxt = _varint(buf, pos)
        elif wire == _LEN:
            length, pos = _varint(buf, pos)
            nxt = pos + length
        elif wire == _I64:
            nxt = pos + 8
        elif wire == _I32:
            nxt = pos + 4
        else:
            raise MetadataError(f"unsupported protobuf wire type {wire} at byte {first}")
        if number == 0 or nxt > end:
            raise MetadataError(f"field {number} at byte {first} runs past the end of the file")
        yield number, pos, nxt, first
        pos = nxt


def _entry(buf: bytes | mmap.mmap, start: int, end: int) -> tuple[str, str]:
    key = value = ""
    for number, a, b, _ in _fields(buf, start, end):
        if number == 1:
            key = bytes(buf[a:b]).decode("utf-8", "replace")
        elif number == 2:
            value = bytes(buf[a:b]).decode("utf-8", "replace")
    return key, value


def _open(path: str | Path):
    f = open(path, "rb")
    if os.fstat(f.fileno()).st_size == 0:
        f.close()
        raise MetadataError(f"{path}: empty file")
    return f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The file's ``metadata_props`` as a dict (a repeated key: the last one wins, as in ONNX)."""
    f, buf = _open(path)
    try:
        return dict(_entry(buf, a, b) for n, a, b, _ in _fields(buf) if n == METADATA_FIELD)
    finally:
        buf.close()
        f.close()


def graph_sha256(path: str | Path) -> str:
    """SHA-256 of every top-level field but the metadata: unchanged by a card rewrite."""
    h = hashlib.sha256()
    f, buf = _open(path)
    try:
        for number, _, end, first in _fields(buf):
            if number != METADATA_FIELD:
                h.update(buf[first:end])
    finally:
        buf.close()
        f.close()
    return h.hexdigest()


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _encode_len(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def write_metadata(path: str | Path, updates: Mapping[str, str | None]) -> None:
    """Set (or, with None, remove) metadata keys; the file is replaced atomically.

    Entries of other keys and every other field keep their bytes and order; the updated entries
    go at the end.
    """
    path = Path(path)
    mode = path.stat().st_mode & 0o777
    parts: list[bytes] = []
    f, buf = _open(path)
    try:
        for number, a, b, first in _fields(buf):
            if number == METADATA_FIELD and _entry(buf, a, b)[0] in updates:
                continue
            parts.append(bytes(buf[first:b]))
    finally:
        buf.close()
        f.close()
    for key, value in updates.items():
        if value is not None:
            parts.append(_encode_len(METADATA_FIELD, _encode_len(1, key.encode()) + _encode_len(2, value.encode())))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for p in parts:
                out.write(p)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
