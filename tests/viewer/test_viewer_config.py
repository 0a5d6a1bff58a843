"""viewer.config: precedence flags > env > TOML, unknown keys named, every setting described."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from viewer.config import ConfigError, ViewerConfig, load_config
from viewer_testkit import run_cli


def test_precedence_flags_env_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "v.toml"
    toml.write_text('connect = ["tcp://10.0.0.1:5555"]\nstale_after_s = 7\n[watch]\ntile_width = 300\ncolumns = 2\n')
    cfg = load_config({"config": str(toml)})
    assert cfg.connect == ["tcp://10.0.0.1:5555"] and cfg.stale_after_s == 7 and cfg.watch.tile_width == 300
    monkeypatch.setenv("CRACK_VIEWER_WATCH__TILE_WIDTH", "400")
    monkeypatch.setenv("CRACK_VIEWER_CONNECT", "tcp://a:1,tcp://b:2")
    cfg = load_config({"config": str(toml)})
    assert cfg.watch.tile_width == 400 and cfg.watch.columns == 2 and cfg.connect == ["tcp://a:1", "tcp://b:2"]
    cfg = load_config({"config": str(toml), "watch": {"tile_width": 500, "columns": None}})
    assert cfg.watch.tile_width == 500 and cfg.watch.columns == 2


def test_bad_settings_name_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "v.toml"
    toml.write_text("[watch]\ntile_widht = 300\n")
    with pytest.raises(ConfigError, match=r"watch\.tile_widht: unknown key"):
        load_config({"config": str(toml)})
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        load_config({"config": str(tmp_path / "missing.toml")})
    with pytest.raises(ConfigError, match=r"connect: .*localhost:5555.* is not a ZeroMQ endpoint"):
        load_config({"connect": ["localhost:5555"]})
    monkeypatch.setenv("CRACK_VIEWER_TILE_WIDTH", "3")
    with pytest.raises(ConfigError, match="env CRACK_VIEWER_TILE_WIDTH: unknown setting"):
        load_config({})


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, f in model.model_fields.items():
        yield prefix + name, f
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            yield from _fields(f.annotation, prefix + name + ".")


def test_every_setting_has_a_description() -> None:
    missing = [n for n, f in _fields(ViewerConfig) if not f.description]
    assert not missing, missing
    assert len(list(_fields(ViewerConfig))) >= 30


def test_cli_config_errors_exit_78_and_help_is_fast(tmp_path: Path) -> None:
    r = run_cli("watch", "--headless")
    assert r.returncode == 78 and "watch.out: --headless needs --out" in r.stderr
    r = run_cli("watch", "--connect", "nonsense")
    assert r.returncode == 78 and "connect: " in r.stderr and "nonsense" in r.stderr
    r = run_cli("record", "--connect", "tcp://127.0.0.1:1", "--out", tmp_path, "--validate-config",
                env={"CRACK_VIEWER_RECORD__MAX_FILE_MB": "2"})
    assert r.returncode == 0 and '"max_file_mb": 2.0' in r.stdout
    t = time.monotonic()
    r = run_cli("--help")
    assert r.returncode == 0 and "watch" in r.stdout and "relay" in r.stdout
    assert time.monotonic() - t < 5  # generous for a loaded 2-core CI box; typically ~0.1 s


def test_bench_prints_messages_per_second() -> None:
    r = run_cli("bench", "--seconds", "0.05")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if "msgs_per_s=" in line]
    assert len(rows) == 6 and all(int(line.split("msgs_per_s=")[1].split()[0]) > 0 for line in rows)


def test_viewer_imports_no_heavy_runtime() -> None:
    code = ("import sys, viewer.cli, viewer.watch, viewer.record, viewer.replay, viewer.relay, viewer.render; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt', 'openvino') if m in sys.modules))")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)


def test_every_bad_setting_is_reported_at_once_naming_key_and_origin(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "v.toml"
    toml.write_text('stale_after_s = -1\n[watch]\ntile_widht = 300\n[record]\nmax_file_mb = "big"\n')
    monkeypatch.setenv("CRACK_VIEWER_WATCH__COLUMNS", "99")
    monkeypatch.setenv("CRACK_VIEWER_REPLAY__SPED", "2")
    with pytest.raises(ConfigError) as e:
        load_config({"config": str(toml), "connect": ["nonsense"]})
    text = str(e.value)
    for line in (f"{toml}: stale_after_s: ", f"{toml}: watch.tile_widht: unknown key",
                 f"{toml}: record.max_file_mb: ", "env CRACK_VIEWER_WATCH__COLUMNS: watch.columns: ",
                 "env CRACK_VIEWER_REPLAY__SPED: unknown setting in replay", "flag: connect: 'nonsense'"):
        assert line in text, (line, text)
    assert text.startswith("6 invalid settings:")


def test_a_toml_that_is_not_toml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "v.toml"
    bad.write_bytes(b"[watch\n")
    with pytest.raises(ConfigError, match=r"v\.toml: not valid TOML"):
        load_config({"config": str(bad)})
    bad.write_bytes(b"title = '\xff'\n")
    with pytest.raises(ConfigError, match=r"v\.toml: not valid TOML: not UTF-8"):
        load_config({"config": str(bad)})
