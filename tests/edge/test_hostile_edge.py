"""Careless hands on the edge side (issue #18): config bounds, card arithmetic, `check` = `run`'s checks,
one threshold resolution, and the frame-size bound under an address-space cap."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common import exits
from edge.config import ConfigError, EdgeConfig, load_config

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRACK_EDGE_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("data, named", [
    ({"publish": {"endpoint": "tcp://127.0.0.1:99999"}}, "publish.endpoint"),
    ({"backend": {"threads": 2000}}, "backend.threads"),
    ({"source": {"camera_size": [-1280, 0]}}, "source.camera_size"),
    ({"model": {"max_side": 100000}}, "model.max_side"),
])
def test_out_of_range_settings_are_refused_naming_the_key(data, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, data)


@pytest.mark.parametrize("field, value", [("size_multiple", 0), ("std", [0, 0, 0])])
def test_card_arithmetic_is_refused_at_load_naming_the_field(tmp_path, student_onnx, field, value):
    model = tmp_path / "m.onnx"
    shutil.copy(student_onnx, model)
    card = json.loads(student_onnx.with_suffix(".json").read_text())
    card[field] = value
    model.with_suffix(".json").write_text(json.dumps(card))
    r = run_cli("check", "--model", str(model), "--backend", "onnxruntime", "--inference-size", "native")
    assert r.returncode == exits.CONFIG, r.stderr
    assert field in r.stderr and "Traceback" not in r.stderr


def test_threshold_zero_is_reported_as_zero(student_onnx, small_video):
    from edge.loader import resolve_threshold
    from models.card import ModelCard

    card = ModelCard(name="x", threshold=0.7)
    assert resolve_threshold(EdgeConfig.model_validate({"model": {"threshold": 0.0}}), card) == 0.0
    assert resolve_threshold(EdgeConfig(), card) == 0.7
    r = run_cli("check", "--model", str(student_onnx), "--backend", "onnxruntime", "--source", str(small_video),
                env={"CRACK_EDGE_MODEL__THRESHOLD": "0"})
    assert r.returncode == 0, r.stderr
    assert "threshold=0.0" in r.stdout, r.stdout


def test_check_refuses_a_reachable_endpoint_without_keys(tmp_path, student_onnx, small_video):
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[publish]\nendpoint = "tcp://0.0.0.0:5599"\n')
    r = run_cli("check", "--config", str(cfg), "--model", str(student_onnx), "--backend", "onnxruntime",
                "--source", str(small_video))
    assert r.returncode == exits.CONFIG, r.stdout + r.stderr
    assert "security.allow_insecure" in r.stderr


def test_check_refuses_a_world_readable_secret_key(tmp_path, student_onnx, small_video):
    from edge import security

    keys = tmp_path / "keys"
    security.create_keys(keys, ["alice"])
    (keys / "authorized").mkdir()
    shutil.copy(keys / "viewers" / "alice.key", keys / "authorized")
    os.chmod(keys / "daemon.key_secret", 0o644)
    env = {"CRACK_EDGE_SECURITY__SECRET_KEY": str(keys / "daemon.key_secret"),
           "CRACK_EDGE_SECURITY__AUTHORIZED_KEYS": str(keys / "authorized")}
    r = run_cli("check", "--model", str(student_onnx), "--backend", "onnxruntime", "--source", str(small_video),
                env=env)
    assert r.returncode == exits.CONFIG, r.stdout + r.stderr
    assert "readable by others" in r.stderr


def test_check_opens_the_source(tmp_path, student_onnx):
    missing = tmp_path / "gone" / "clip.mp4"
    r = run_cli("check", "--model", str(student_onnx), "--backend", "onnxruntime", "--source", str(missing))
    assert r.returncode == exits.NOINPUT, r.stdout + r.stderr
    assert "source.uri" in r.stderr and str(missing) in r.stderr


def test_huge_photo_is_scaled_down_and_the_daemon_keeps_going(tmp_path, student_onnx, endpoint, subscriber,
                                                              edge_daemon):
    """An 8000x8000 photo in a folder, native size, --loop, under a 3 GiB address-space cap."""
    import cv2
    import numpy as np

    if shutil.which("prlimit") is None:
        pytest.skip("prlimit is not installed (apt-get install util-linux)")
    folder = tmp_path / "photos"
    folder.mkdir()
    big = np.full((8000, 8000, 3), 128, np.uint8)
    cv2.line(big, (0, 0), (7999, 7999), (20, 20, 20), 9)
    assert cv2.imwrite(str(folder / "huge.jpg"), big)
    sub = subscriber(endpoint)
    # The cap is set on this (already running) helper shell and inherited by the daemon's python.
    d = edge_daemon("--model", str(student_onnx), "--backend", "onnxruntime", "--threads", "1", "--publish", endpoint,
                    "--inference-size", "native", "--source", str(folder), "--loop", "--vehicle-id", "van-7",
                    env={"CRACK_EDGE_MODEL__MAX_SIDE": "256"})
    os.system(f"prlimit --pid {d.pid} --as={3 * 2**30}")
    masks = sub.collect(2, timeout=90)
    assert len(masks) == 2, d.log()
    h = masks[0].header
    assert max(h["width"], h["height"]) == 256 and (h["frame_width"], h["frame_height"]) == (8000, 8000)
    status = sub.until(lambda m: m.kind == "status" and m.header["drops"].get("downscaled", 0) >= 2, timeout=30)
    assert status is not None, d.log()
    assert d.proc.poll() is None, d.log()
    assert d.log().count("event=frame_downscaled") == 1


def test_the_exit_status_table_in_the_docs_matches_common_exits():
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Exit statuses", 1)[1]
    for code, meaning in exits.TABLE.items():
        assert f"| {code} |" in section and meaning in section, (code, meaning)
