"""The wire's headers, declared once: :class:`MaskHeader`, :class:`StatusHeader` and what they nest
(:class:`Position`, :class:`PositionStatus`, :class:`Ground`, :class:`Crack`).

Every sender builds these (``edge/pipeline.py``, ``edge/daemon.py``), ``edge.wire.encode_mask`` /
``encode_status`` take them, and ``edge.wire.decode`` returns them, so a field's type and limits
live here and nowhere else.  Constructing one checks it: a sender cannot send, and a receiver
cannot accept, a header that breaks the documented constraints (``docs/protocol.md``); every
violation is a :class:`WireError` naming the field.

They are frozen dataclasses and read-only mappings at once: ``h.seq`` and ``h["seq"]`` /
``h.get("position")`` both work, so the viewer, the report and the tests read them as before.
Mapping rules: an optional top-level field that is absent or ``null`` is the same thing (not
``in`` the header, ``get`` gives the default, not sent); inside a nested object ``null`` is a
value ("not known") and is kept.  Fields this version does not declare are kept in ``extra`` and
read like the others (adding a field is not a schema change).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, InitVar, dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, Iterator

SCHEMA = 1
# Sizes beyond these are absurd for a road camera and are refused before decoding pixels.
MAX_SIDE = 8192
MAX_INT = 2**53            # integers a JSON reader in any language holds exactly; seq etc. stay below
VEHICLE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
RUN_ID_RE = re.compile(r"[0-9a-f]{32}")
MAX_CRACKS = 32
MAX_FOOTPRINT_POINTS = 16

_NUM = (int, float)
_LIST = (list, tuple)  # a sender may give a tuple; JSON gives a list


class _Unset:
    """Default of a nested record's optional field: tells "not sent" from "sent as null"."""
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


class RecordList(tuple):  # type: ignore[type-arg]
    """An immutable list of records (``cracks``) that equals the JSON list it was read from."""
    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return tuple.__eq__(self, other)  # type: ignore[arg-type]

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__


class WireError(ValueError):
    """A message that does not follow this protocol; ``reason`` is a short stable tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ---------------------------------------------------------------- value checks (name, value) -> None

def _count(name: str, v: int) -> None:
    if not 0 <= v < MAX_INT:
        raise WireError("bad_field", f"{name}={v} out of 0..2**53")


def _index(name: str, v: int) -> None:  # -1 = "none yet"
    if not -1 <= v < MAX_INT:
        raise WireError("bad_field", f"{name}={v} out of -1..2**53")


def _side(name: str, v: int) -> None:
    if not 0 < v <= MAX_SIDE:
        raise WireError("absurd_size", f"{name}={v} out of 1..{MAX_SIDE}")


def _side_or_zero(name: str, v: int) -> None:  # a status before the first frame says 0 x 0
    if not 0 <= v <= MAX_SIDE:
        raise WireError("absurd_size", f"{name}={v} out of 0..{MAX_SIDE}")


def _vehicle_id(name: str, v: str) -> None:
    if not VEHICLE_ID_RE.fullmatch(v):
        raise WireError("bad_field", f"vehicle_id {v[:64]!r}: letters, digits, . _ - (1-64)")


def _run_id(name: str, v: str) -> None:
    if not RUN_ID_RE.fullmatch(v):
        raise WireError("bad_field", f"run_id {v[:64]!r}: 32 hex digits")


def _between(lo: float, hi: float) -> Callable[[str, Any], None]:
    def check(name: str, v: float) -> None:
        if not lo <= v <= hi:
            raise WireError("bad_field", f"{name}={v} out of {lo}..{hi}")
    return check


def _numbers(n_min: int, n_max: int, depth: int = 1) -> Callable[[str, Any], None]:
    """A list of ``n_min..n_max`` finite numbers (depth 1) or of such lists of 2 (depth 2)."""
    def check(name: str, v: list[Any]) -> None:
        if not n_min <= len(v) <= n_max:
            raise WireError("bad_field", f"{name} has {len(v)} entries, {n_min}..{n_max} expected")
        for item in v:
            if depth == 2:
                check_point = _numbers(2, 2)
                if not isinstance(item, (list, tuple)):
                    raise WireError("bad_field", f"{name}: {item!r} is not a list")
                check_point(name, item)
            elif isinstance(item, bool) or not isinstance(item, _NUM) or not math.isfinite(item):
                raise WireError("bad_field", f"{name}: {item!r} is not a finite number")
    return check


MAX_ENDPOINT_CHARS = 256


def _endpoint(name: str, v: str) -> None:
    if len(v) > MAX_ENDPOINT_CHARS:
        raise WireError("bad_field", f"{name} longer than {MAX_ENDPOINT_CHARS} characters")


def _plain_object(name: str, v: Mapping[str, Any]) -> None:
    if not all(isinstance(k, str) for k in v):
        raise WireError("bad_field", f"{name}: keys must be strings")


@dataclass(frozen=True)
class Spec:
    """How one field is checked: its types, whether the wire must carry it, a value check, and a
    nested record type (``many`` > 0: a list of at most that many of them)."""
    types: tuple[type, ...]
    required: bool = False
    check: Callable[[str, Any], None] | None = None
    nested: type | None = None
    many: int = 0


def _f(types: type | tuple[type, ...], required: bool = False, check: Callable[[str, Any], None] | None = None,
       nested: type | None = None, many: int = 0, default: Any = None) -> Any:
    t = types if isinstance(types, tuple) else (types,)
    return field(default=default, metadata={"wire": Spec(t, required, check, nested, many)})


# ---------------------------------------------------------------- the record base

class Record(Mapping[str, Any]):
    """Base of every header record: checks at construction, read-only mapping access, ``to_dict``."""

    __slots__ = ()
    SPECS: ClassVar[dict[str, Spec]]
    REQUIRED: ClassVar[tuple[str, ...]]
    DEFAULTS: ClassVar[dict[str, Any]]
    ROWS: ClassVar[tuple[tuple[Any, ...], ...]]
    OMIT_NONE: ClassVar[bool] = False   # top-level headers: a None optional field is not sent
    extra: Mapping[str, Any]
    _unset: frozenset[str]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = ""):  # type: ignore[no-untyped-def]
        """The record of a decoded JSON object; a required field missing is ``missing_field``."""
        if type(data) is not dict:
            if isinstance(data, cls):
                return data
            if not isinstance(data, Mapping):
                raise WireError("bad_field", f"{where.rstrip('.') or cls.__name__}={data!r:.64} is not an object")
        specs = cls.SPECS
        known = {k: v for k, v in data.items() if k in specs}
        extra = {k: v for k, v in data.items() if k not in specs} if len(known) != len(data) else {}
        for name in cls.REQUIRED:
            if name not in known:
                raise WireError("missing_field", f"{where}{name}")
        # What __init__ + __post_init__ do, without the frozen __init__'s per-field setattr calls
        # (half the cost of decoding a header).
        obj = cls.__new__(cls)
        values = obj.__dict__
        values.update(cls.DEFAULTS)
        values.update(known)
        values["extra"] = extra
        obj._check(where)
        obj._after_check()
        return obj

    def _check(self, where: str) -> None:
        # Hot path (every message received): plain dict reads, labels built only for an error.
        values = self.__dict__
        unset = []
        for name, types, required, check, spec in self.ROWS:
            v = values[name]
            if v is None or v is UNSET:
                if v is UNSET:
                    unset.append(name)
                    values[name] = None
                if required:
                    raise WireError("missing_field", f"{where}{name}")
                continue
            if spec is not None:
                values[name] = self._nested(spec, f"{where}{name}", v)
                continue
            t = type(v)
            # bool is an int in Python; a field typed int must not accept True.
            if t not in types and (t is bool or not isinstance(v, types)):
                raise WireError("bad_field", f"{where}{name}={v!r:.64}")
            if t is float and not math.isfinite(v):
                raise WireError("bad_number", f"{where}{name} is not finite")
            if check is not None:
                check(f"{where}{name}", v)
        if unset:
            values["_unset"] = frozenset(unset)

    @staticmethod
    def _nested(spec: Spec, label: str, v: Any) -> Any:
        nested: Any = spec.nested
        if not spec.many:
            return v if isinstance(v, nested) else nested.from_dict(v, f"{label}.")
        if not isinstance(v, (list, tuple)):
            raise WireError("bad_field", f"{label}={v!r:.64} is not a list")
        if len(v) > spec.many:
            raise WireError("bad_field", f"{label} has {len(v)} entries, at most {spec.many}")
        return RecordList(nested.from_dict(x, f"{label}[{i}].") for i, x in enumerate(v))

    def _after_check(self) -> None:
        """Checks across fields, after each field's own."""

    def _absent(self, name: str) -> bool:
        return getattr(self, name) is None if self.OMIT_NONE else name in self._unset

    # ------------------------------------------------------------ mapping access

    def __getitem__(self, key: str) -> Any:
        if key in self.SPECS:
            return getattr(self, key)
        return self.extra[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str) and key in self.SPECS:
            return not self._absent(key)
        return key in self.extra

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __iter__(self) -> Iterator[str]:
        for name in self.SPECS:
            if not self._absent(name):
                yield name
        yield from self.extra

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, in declared order, then the undeclared fields."""
        out: dict[str, Any] = {}
        for name in self.SPECS:
            if self._absent(name):
                continue
            v = getattr(self, name)
            if isinstance(v, Record):
                v = v.to_dict()
            elif isinstance(v, tuple) and v and isinstance(v[0], Record):
                v = [x.to_dict() for x in v]
            out[name] = v
        out.update(self.extra)
        return out

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` (checked again)."""
        return replace(self, **changes)  # type: ignore[type-var]


def _record(cls: type) -> type:
    """Frozen, keyword-only, mapping equality (a record equals the dict it was read from).

    Every record gets the same three last fields, added here rather than written in each class:
    ``extra`` (undeclared fields, kept), ``_unset`` (declared fields that were absent) and the
    InitVar ``_where``, which only prefixes error messages with the path of a nested record.
    """
    own = cls.__dict__.get("__annotations__", {})
    own.update({"extra": Mapping[str, Any], "_unset": frozenset[str], "_where": InitVar[str]})
    cls.__annotations__ = own
    cls.extra = field(default_factory=dict, repr=False)  # type: ignore[attr-defined]
    cls._unset = field(default=frozenset(), init=False, repr=False)  # type: ignore[attr-defined]
    cls._where = ""  # type: ignore[attr-defined]
    cls.__post_init__ = _post_init  # type: ignore[attr-defined]
    cls = dataclass(frozen=True, eq=False, kw_only=True)(cls)
    specs: dict[str, Spec] = {f.name: f.metadata["wire"] for f in fields(cls) if "wire" in f.metadata}
    cls.SPECS = specs  # type: ignore[attr-defined]
    cls.DEFAULTS = {f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[attr-defined,misc]
                    for f in fields(cls) if f.name != "extra"}
    cls.REQUIRED = tuple(n for n, sp in specs.items() if sp.required)  # type: ignore[attr-defined]
    # (name, types, required, check, spec if nested) per field: the checking loop reads tuples.
    cls.ROWS = tuple((n, sp.types, sp.required, sp.check, sp if sp.nested else None)  # type: ignore[attr-defined]
                     for n, sp in specs.items())
    return cls


def _post_init(self: Record, _where: str) -> None:
    self._check(_where)
    self._after_check()


# ---------------------------------------------------------------- nested records

@_record
class Position(Record):
    """``position`` of a mask: where the vehicle was at ``t_capture`` (null numbers: not known)."""
    source: str | None = _f(str, required=True)
    fix: bool | None = _f(bool, required=True)
    reason: str | None = _f(str, default=UNSET)
    lat: float | None = _f(_NUM, check=_between(-90.0, 90.0), default=UNSET)
    lon: float | None = _f(_NUM, check=_between(-180.0, 180.0), default=UNSET)
    alt_m: float | None = _f(_NUM, default=UNSET)
    speed_mps: float | None = _f(_NUM, default=UNSET)
    heading_deg: float | None = _f(_NUM, check=_between(0.0, 360.0), default=UNSET)
    quality: str | None = _f(str, default=UNSET)
    age_s: float | None = _f(_NUM, default=UNSET)


@_record
class PositionStatus(Record):
    """``position`` of a status: the position receiver's state."""
    source: str | None = _f(str, required=True)
    state: str | None = _f(str, required=True)
    last_error: str | None = _f(str, default=UNSET)
    fixes: int | None = _f(int, check=_count, default=UNSET)
    satellites: int | None = _f(int, check=_count, default=UNSET)
    last_fix_age_s: float | None = _f(_NUM, default=UNSET)


@_record
class Ground(Record):
    """``ground`` of a calibrated mask: the frame's measures in metres on the road."""
    crack_length_m: float | None = _f(_NUM, default=UNSET)
    crack_max_width_mm: float | None = _f(_NUM, default=UNSET)
    crack_area_m2: float | None = _f(_NUM, default=UNSET)
    surveyed_area_m2: float | None = _f(_NUM, default=UNSET)
    footprint_m: list[list[float]] | None = _f(_LIST, check=_numbers(0, MAX_FOOTPRINT_POINTS, depth=2), default=UNSET)


@_record
class Crack(Record):
    """One entry of ``cracks``: a crack region of the mask, in pixels and (calibrated) on the road."""
    type: str | None = _f(str, default=UNSET)
    length_px: float | None = _f(_NUM, default=UNSET)
    max_width_px: float | None = _f(_NUM, default=UNSET)
    area_px: float | None = _f(_NUM, default=UNSET)
    bbox_px: list[float] | None = _f(_LIST, check=_numbers(4, 4), default=UNSET)
    length_m: float | None = _f(_NUM, default=UNSET)
    max_width_mm: float | None = _f(_NUM, default=UNSET)
    area_m2: float | None = _f(_NUM, default=UNSET)
    centroid_m: list[float] | None = _f(_LIST, check=_numbers(2, 2), default=UNSET)
    severity: str | None = _f(str, default=UNSET)


# ---------------------------------------------------------------- the headers

@_record
class MaskHeader(Record):
    """Frame 2 of a ``mask/<vehicle_id>`` message (docs/protocol.md, "Mask header")."""
    OMIT_NONE: ClassVar[bool] = True
    KIND: ClassVar[str] = "mask"
    vehicle_id: str = _f(str, True, _vehicle_id)
    run_id: str = _f(str, True, _run_id)
    seq: int = _f(int, True, _count)
    frame_index: int = _f(int, True, _count)
    t_capture: float = _f(_NUM, True)
    t_publish: float = _f(_NUM, True)
    infer_ms: float = _f(_NUM, True)
    model_sha256: str = _f(str, True)
    width: int = _f(int, True, _side)
    height: int = _f(int, True, _side)
    crack_ratio: float = _f(_NUM, True)
    crack_count: int = _f(int, True, _count)
    crack_length_px: float = _f(_NUM, True)
    crack_max_width_px: float = _f(_NUM, True)
    threshold: float | None = _f(_NUM)
    frame_width: int | None = _f(int, check=_side)
    frame_height: int | None = _f(int, check=_side)
    position: Position | None = _f(dict, nested=Position)
    calibrated: bool | None = _f(bool)
    ground: Ground | None = _f(dict, nested=Ground)
    cracks: tuple[Crack, ...] | None = _f(list, nested=Crack, many=MAX_CRACKS)
    schema: int = _f(int, True, default=SCHEMA)
    kind: str = _f(str, True, default="mask")
    has_frame: bool = _f(bool, True, default=False)

    def _after_check(self) -> None:
        _check_kind(self)


@_record
class StatusHeader(Record):
    """Frame 2 of a ``status/<vehicle_id>`` message, the heartbeat (docs/protocol.md, "Status header")."""
    OMIT_NONE: ClassVar[bool] = True
    KIND: ClassVar[str] = "status"
    vehicle_id: str = _f(str, True, _vehicle_id)
    run_id: str = _f(str, True, _run_id)
    seq: int = _f(int, True, _count)
    t_publish: float = _f(_NUM, True)
    fps: float = _f(_NUM, True)
    drops: Mapping[str, Any] = _f(dict, True, _plain_object)
    source: Mapping[str, Any] = _f(dict, True, _plain_object)
    backend: str = _f(str, True)
    backend_info: Mapping[str, Any] | None = _f(dict, check=_plain_object)
    model_sha256: str = _f(str, True)
    width: int = _f(int, True, _side_or_zero)
    height: int = _f(int, True, _side_or_zero)
    state: str | None = _f(str)
    uptime_s: float | None = _f(_NUM)
    published: int | None = _f(int, check=_count)
    last_frame_index: int | None = _f(int, check=_index)
    stages_ms: Mapping[str, Any] | None = _f(dict, check=_plain_object)
    record: Mapping[str, Any] | None = _f(dict, check=_plain_object)
    position: PositionStatus | None = _f(dict, nested=PositionStatus)
    # The vehicle's history service (issue #17): where to ask for missed masks, and what it holds.
    history: str | None = _f(str, check=_endpoint)
    first_mask_seq: int | None = _f(int, check=_count)
    last_mask_seq: int | None = _f(int, check=_count)
    history_stats: Mapping[str, Any] | None = _f(dict, check=_plain_object)
    schema: int = _f(int, True, default=SCHEMA)
    kind: str = _f(str, True, default="status")

    def _after_check(self) -> None:
        _check_kind(self)


def _check_kind(h: MaskHeader | StatusHeader) -> None:
    if h.schema != SCHEMA:
        raise WireError("unknown_schema", repr(h.schema)[:32])
    if h.kind != h.KIND:
        raise WireError("bad_field", f"kind={h.kind!r:.32} in a {h.KIND} header")


Header = MaskHeader | StatusHeader
