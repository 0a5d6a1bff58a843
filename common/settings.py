"""The one settings loader of crack-edge, crack-viewer and crack-train (and `crack-train ablation`).

Each program keeps its own pydantic model (``edge/config.py``, ``viewer/config.py``,
``trainer/config.py``); this module fills it, in one order for all of them:

    defaults < TOML file < environment (PREFIX + key path, nesting with ``__``) < flags

The layers are merged into one dict and validated once, by the program's own model: no second
parse, no ``model_construct``.  Every problem is collected before anything is refused, and each
one names its key and where the value came from (the file, the variable or the flag):

    config error: 2 invalid settings:
      edge.toml: record.enable: unknown key (known: enabled, directory, ...)
      env CRACK_EDGE_SOURCE__LOOP: source.loop: Input should be a valid boolean (got 'sometimes')

An environment variable with the program's prefix that names no setting is a problem like any
other: a typo in a systemd unit's ``Environment=`` must not be silently ignored.
"""
from __future__ import annotations

import json
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 only
    import tomli as tomllib

NEST = "__"
# A settings file is a few kB; anything this big is the wrong file, and is not read into memory.
MAX_TOML_BYTES = 1 << 20

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Problem:
    """One refused setting: ``key`` (dotted path), ``message``, and ``origin`` (file / env NAME / flag)."""

    key: str
    message: str
    origin: str = ""

    def __str__(self) -> str:
        where = f"{self.origin}: " if self.origin else ""
        return f"{where}{self.key}: {self.message}" if self.key else f"{where}{self.message}"


class SettingsError(ValueError):
    """Settings that cannot be used; ``problems`` lists every one, each naming its key and origin."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        if len(problems) == 1:
            text = str(problems[0])
        else:
            text = f"{len(problems)} invalid settings:\n" + "\n".join(f"  {p}" for p in problems)
        super().__init__(text)


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed file; SettingsError names the file when it is missing, unreadable or not TOML."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_TOML_BYTES + 1)
    except FileNotFoundError:
        raise SettingsError([Problem("", "config file not found", str(p))]) from None
    except OSError as e:
        raise SettingsError([Problem("", f"cannot read config file: {e.strerror}", str(p))]) from None
    if len(raw) > MAX_TOML_BYTES:
        raise SettingsError([Problem("", f"config file larger than {MAX_TOML_BYTES} bytes", str(p))])
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SettingsError([Problem("", f"not valid TOML: not UTF-8 at byte {e.start}", str(p))]) from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError([Problem("", f"not valid TOML: {e}", str(p))]) from None


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (``X`` or ``X | None``), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


class NoDecode:
    """``Annotated[list[str], NoDecode]``: an environment value reaches the model as the string it is
    (the model splits "a,b" itself) instead of being read as JSON."""


def _decode_json(annotation: Any) -> bool:
    """Whether an environment string for this field is read as JSON first (lists, tables, [W, H])."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, dict, set, frozenset):
        return True
    if origin is not None and origin not in (typing.Literal,):
        return any(_decode_json(a) for a in typing.get_args(annotation))  # Union / X | None
    return isinstance(annotation, type) and (issubclass(annotation, BaseModel) or annotation in (list, tuple, dict))


def _env_layer(model: type[BaseModel], prefix: str, environ: Mapping[str, str]
               ) -> tuple[dict[str, Any], dict[tuple[str, ...], str], list[Problem]]:
    """PREFIX* variables as a nested dict, the variable behind each path, and the unknown names."""
    data: dict[str, Any] = {}
    names: dict[tuple[str, ...], str] = {}
    problems: list[Problem] = []
    for name in sorted(environ):  # PREFIX_SOURCE (a JSON table) before PREFIX_SOURCE__URI, which refines it
        if not name.upper().startswith(prefix):
            continue
        parts = name[len(prefix):].lower().split(NEST)
        current: type[BaseModel] | None = model
        path: list[str] = []
        field = None
        for part in parts:
            if current is None:  # below a table-valued field (backend.options): the model judges its keys
                path.append(part)
                continue
            if part not in current.model_fields:
                where = ".".join(path)
                # The variable's name is the key: it is not repeated as a dotted path.
                problems.append(Problem("",
                                        f"unknown setting{' in ' + where if where else ''} "
                                        f"(known: {', '.join(current.model_fields)})", f"env {name}"))
                break
            field = current.model_fields[part]
            path.append(part)
            current = _submodel(field.annotation)
        else:
            value: Any = environ[name]
            if (len(path) == len(parts) and field is not None and NoDecode not in field.metadata
                    and _decode_json(field.annotation)):
                try:
                    value = json.loads(value)
                except ValueError:
                    pass  # e.g. "448x448" or "native": the model's own validator parses it
            node = data
            for p in path[:-1]:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    problems.append(Problem(".".join(path), f"conflicts with the non-table {p!r} set in the "
                                                            "environment", f"env {name}"))
                    break
            else:
                old = node.get(path[-1])
                node[path[-1]] = merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
                names[tuple(path)] = name
    return data, names, problems


def merge(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """``high`` over ``low``; tables merge key by key, anything else is replaced."""
    out = dict(low)
    for k, v in high.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    """Flags left unset are None: they must not hide what TOML and environment say."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            v = drop_none(v)
            if not v:  # a flag group none of whose flags was given
                continue
        if v is not None:
            out[k] = v
    return out


def _holds(layer: Mapping[str, Any], loc: tuple[Any, ...]) -> bool:
    """Whether ``layer`` supplies the value at ``loc`` (or the value of one of its parents)."""
    node: Any = layer
    for part in loc:
        if not isinstance(node, Mapping):
            return True  # a leaf above loc: e.g. a list whose item was refused
        if part not in node:
            return False
        node = node[part]
    return True


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or part not in current.model_fields:
            return []
        current = _submodel(current.model_fields[part].annotation)
    return list(current.model_fields) if current is not None else []


def problems_of(e: ValidationError, model: type[BaseModel],
                layers: list[tuple[str, Mapping[str, Any], dict[tuple[str, ...], str] | None]]) -> list[Problem]:
    """Every error of ``e``, with the origin of the value it is about (highest layer first in ``layers``)."""
    out = []
    for err in e.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = _known_keys(model, loc[:-1])
            msg = "unknown key" + (f" (known: {', '.join(known)})" if known else "")
        value = err.get("input")
        if err["type"] not in ("extra_forbidden", "missing") and not isinstance(value, (dict, BaseModel)) and loc:
            msg += f" (got {value!r})"
        origin = ""
        for label, data, env_names in layers if loc else ():
            if _holds(data, loc):
                if env_names is not None:
                    for n in range(len(loc), 0, -1):
                        if tuple(loc[:n]) in env_names:
                            origin = f"env {env_names[tuple(loc[:n])]}"
                            break
                    else:
                        origin = label
                else:
                    origin = label
                break
        out.append(Problem(key, msg, origin))
    return out


def load(model: type[M], *, env_prefix: str, toml: str | Path | None = None, section: str | None = None,
         flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> M:
    """``model`` validated from defaults < TOML < ``env_prefix`` environment < ``flags`` (None = unset).

    ``section``: read the file's ``[section]`` table when it has one (else its top level), so one
    file can hold the settings of several commands.  Raises SettingsError listing every problem.
    """
    file_data: dict[str, Any] = {}
    if toml is not None:
        file_data = read_toml(toml)
        if section is not None and isinstance(file_data.get(section), dict):
            file_data = file_data[section]
    env_data, env_names, problems = _env_layer(model, env_prefix.upper(), os.environ if environ is None else environ)
    flag_data = drop_none(flags or {})
    layers: list[tuple[str, Mapping[str, Any], dict[tuple[str, ...], str] | None]] = [
        ("flag", flag_data, None), ("env", env_data, env_names), (str(toml or "config"), file_data, None)]
    try:
        cfg = model.model_validate(merge(merge(file_data, env_data), flag_data))
    except ValidationError as e:
        problems += problems_of(e, model, layers)
        cfg = None
    if problems:
        raise SettingsError(problems)
    return cfg  # type: ignore[return-value]


def env_names(model: type[BaseModel], prefix: str) -> list[tuple[str, str]]:
    """(dotted key, environment variable) for every setting: for docs and ``--help`` tables."""
    out = []
    for name, field in model.model_fields.items():
        sub = _submodel(field.annotation)
        if sub is not None:
            out += [(f"{name}.{k}", v) for k, v in env_names(sub, f"{prefix}{name.upper()}{NEST}")]
        else:
            out.append((name, prefix + name.upper()))
    return out


def check_table(model: type[BaseModel], data: Mapping[str, Any], context: str = "") -> dict[str, Any]:
    """``data`` checked against ``model`` inside another model's validator: the keys given, coerced.

    A ValueError (which pydantic files under the enclosing field's key) names every bad key, so a
    typo in a free-form table such as ``backend.options`` is refused like any other.
    """
    try:
        return model.model_validate(dict(data)).model_dump(exclude_unset=True)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                known = _known_keys(model, tuple(err["loc"])[:-1])
                msg = "unknown key" + (f" {context}" if context else "") + (f" (known: {', '.join(known)})" if known
                                                                          else "")
            else:
                msg = err["msg"].removeprefix("Value error, ") + f" (got {err.get('input')!r})"
            lines.append(f"{key}: {msg}")
        raise ValueError("; ".join(lines)) from None
