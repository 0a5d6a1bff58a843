"""common.settings, the one loader of the three programs: layers, environment decoding, refusals."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from common import settings
from common.settings import NoDecode, SettingsError


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: tuple[int, int] | None = None
    mode: Literal["a", "b"] = "a"


class Demo(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)
    name: str = "x"
    items: list[str] = Field(default_factory=list)
    raw: Annotated[list[str], NoDecode] = Field(default_factory=list)
    inner: Inner = Field(default_factory=Inner)
    table: dict[str, int] = Field(default_factory=dict)

    @field_validator("raw", mode="before")
    @classmethod
    def _split(cls, v):
        return v.split(",") if isinstance(v, str) else v


def load(**kw):
    return settings.load(Demo, env_prefix="T_", **kw)


def test_layers_merge_key_by_key_in_order(tmp_path: Path):
    toml = tmp_path / "d.toml"
    toml.write_text('name = "file"\n[inner]\nmode = "b"\nsize = [1, 2]\n')
    cfg = load(toml=toml, environ={"T_INNER__SIZE": "[3, 4]", "T_NAME": "env"},
               flags={"name": None, "inner": {"mode": None}})
    assert (cfg.name, cfg.inner.mode, cfg.inner.size) == ("env", "b", (3, 4))
    assert load(toml=toml, environ={"T_NAME": "env"}, flags={"name": "flag"}).name == "flag"


def test_environment_values_are_json_for_lists_and_tables_unless_no_decode():
    cfg = load(environ={"T_ITEMS": '["p", "q"]', "T_RAW": '["p"],q', "T_TABLE__K": "7", "T_INNER": '{"mode": "b"}'})
    assert cfg.items == ["p", "q"] and cfg.raw == ['["p"]', "q"] and cfg.table == {"k": 7} and cfg.inner.mode == "b"


def test_a_section_table_is_read_when_the_file_has_one(tmp_path: Path):
    toml = tmp_path / "d.toml"
    toml.write_text('name = "top"\n[demo]\nname = "section"\n')
    assert settings.load(Demo, env_prefix="T_", toml=toml, section="demo", environ={}).name == "section"
    toml.write_text('name = "top"\n')
    assert settings.load(Demo, env_prefix="T_", toml=toml, section="demo", environ={}).name == "top"


def test_unknown_names_anywhere_are_refused_together(tmp_path: Path):
    toml = tmp_path / "d.toml"
    toml.write_text('nme = "x"\n[inner]\nmod = "b"\n')
    with pytest.raises(SettingsError) as e:
        load(toml=toml, environ={"T_INER__MODE": "b", "t_inner__sise": "[1, 1]", "OTHER_X": "1"},
             flags={"inner": {"mode": "c"}})
    found = [str(p) for p in e.value.problems]
    assert len(found) == 5, found
    assert f"{toml}: nme: unknown key (known: name, items, raw, inner, table)" in found
    assert f"{toml}: inner.mod: unknown key (known: size, mode)" in found
    assert any(p.startswith("env T_INER__MODE: unknown setting (known:") for p in found)
    assert any(p.startswith("env t_inner__sise: unknown setting in inner (known: size, mode)") for p in found)
    assert any(p.startswith("flag: inner.mode: ") and "'c'" in p for p in found)


def test_a_file_too_large_or_missing_is_refused_unread(tmp_path: Path):
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (settings.MAX_TOML_BYTES + 1))
    with pytest.raises(SettingsError, match="big.toml: config file larger than"):
        load(toml=big, environ={})
    with pytest.raises(SettingsError, match="none.toml: config file not found"):
        load(toml=tmp_path / "none.toml", environ={})
    with pytest.raises(SettingsError, match="cannot read config file"):
        load(toml=tmp_path, environ={})
