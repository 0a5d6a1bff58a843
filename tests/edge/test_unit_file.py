"""The systemd unit: systemd-analyze verify passes and the promised hardening is there."""
from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "crack-edge.service"
VENV_SCRIPT = Path(sys.executable).parent / "crack-edge"


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # keys are case-sensitive in systemd
    cp.read(UNIT)
    return cp


def test_unit_promises():
    s = unit()["Service"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert int(s["WatchdogSec"]) > 0 and s["Restart"] == "on-failure"
    assert "78" in s["RestartPreventExitStatus"].split()
    assert s["DynamicUser"] == "yes" and "video" in s["SupplementaryGroups"].split()
    assert s["ProtectSystem"] == "strict" and s["NoNewPrivileges"] == "yes"
    for key in ("StateDirectory", "CacheDirectory", "ConfigurationDirectory"):
        assert s[key] == "crack-edge"
    assert "--config /etc/crack-edge/crack-edge.toml" in s["ExecStart"]


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    if not VENV_SCRIPT.exists():
        pytest.skip(f"{VENV_SCRIPT} missing: the project is not installed in this venv")
    # verify checks that ExecStart's program exists: point it at this checkout's console script.
    text = UNIT.read_text().replace("/opt/crack-edge/venv/bin/crack-edge", str(VENV_SCRIPT))
    local = tmp_path / "crack-edge.service"
    local.write_text(text)
    r = subprocess.run([tool, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "crack-edge.service" not in r.stderr, r.stderr
    r = subprocess.run([tool, "security", "--offline=true", str(local)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for crack-edge.service: ([0-9.]+)", r.stdout)
    if m is None:
        pytest.skip(f"this systemd-analyze cannot score a unit offline: {r.stderr.strip()[:200]}")
    print(f"systemd-analyze security exposure: {m.group(1)}")
    assert float(m.group(1)) < 4.0, r.stdout[-600:]
