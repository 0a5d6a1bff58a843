"""Engine cache faults that need no TensorRT: a truncated or foreign engine handed to the daemon.

The engine is refused with the reason in the log before TensorRT is asked to load it.  With
``--backend auto`` the daemon falls back to the ONNX model beside the engine and publishes;
asked explicitly for ``tensorrt`` it exits 78 with the reason.  (Building, caching and loading
real engines are tested on a GPU in tests/edge/test_tensorrt.py.)
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge.backends.tensorrt import EngineIdentity, Profile, write_engine
from faultkit import daemon_args
from models.card import sha256_file

pytestmark = pytest.mark.timeout(90)


def model_with_engine(student_onnx: Path, folder: Path, damage: str) -> Path:
    """folder/student.{onnx,json} and student.engine (+ sidecar), damaged as asked."""
    folder.mkdir()
    onnx = Path(shutil.copy(student_onnx, folder / "student.onnx"))
    shutil.copy(student_onnx.with_suffix(".json"), folder / "student.json")
    engine = folder / "student.engine"
    ident = EngineIdentity(sha256_file(onnx), "10.3.0", "NVIDIA Jetson Orin (foreign)", "fp16",
                           Profile((32, 32), (64, 64), (1088, 1920)))
    write_engine(engine, bytes(range(256)) * 64, ident)
    if damage == "truncated":
        engine.write_bytes(engine.read_bytes()[:5000])  # a copy cut short
    elif damage == "no_sidecar":
        engine.with_name(engine.name + ".json").unlink()
    return engine


@pytest.mark.parametrize("damage, reason", [
    ("truncated", "truncated or altered: 5000 bytes"),
    ("no_sidecar", "no sidecar"),
    ("foreign", "TensorRT is not installed"),  # intact, but nothing here can run it
])
def test_auto_refuses_the_engine_and_falls_back_to_onnx(student_onnx, endpoint, subscriber, small_video,
                                                        edge_daemon, tmp_path, damage, reason, figures):
    from edge.backends.tensorrt import TensorRTBackend

    if TensorRTBackend.available() and damage == "foreign":
        pytest.skip("TensorRT is installed: a foreign engine is refused by its version check (tests/edge)")
    engine = model_with_engine(student_onnx, tmp_path / "model", damage)
    sub = subscriber(endpoint)
    args = daemon_args(engine, endpoint, "--source", str(small_video), "--max-frames", "3", "--wait-subscriber", "15")
    args[args.index("--backend") + 1] = "auto"
    d = edge_daemon(*args)
    masks = sub.collect(3, timeout=40)
    status = sub.until(lambda m: m.kind == "status", timeout=5)
    assert d.wait(20) == 0, d.log()[-3000:]
    line = next((x for x in d.log().splitlines() if "engine refused" in x), "")
    assert reason in line and "action=fallback" in line and "student.onnx" in line, d.log()[-3000:]
    assert len(masks) == 3
    assert status is not None and status.header["backend"] != "tensorrt"
    figures.record(f"engine_{damage}_auto", result="refused, fell back", backend=status.header["backend"],
                   log=line.split("edge.daemon ", 1)[-1][:200])


def test_explicit_tensorrt_with_a_truncated_engine_exits_78_with_the_reason(student_onnx, endpoint, small_video,
                                                                             edge_daemon, tmp_path, figures):
    engine = model_with_engine(student_onnx, tmp_path / "model", "truncated")
    args = daemon_args(engine, endpoint, "--source", str(small_video))
    args[args.index("--backend") + 1] = "tensorrt"
    d = edge_daemon(*args)
    assert d.wait(30) == 78, d.log()[-3000:]
    line = next((x for x in d.log().splitlines() if "startup failed" in x), "")
    # The integrity check speaks first: the reason is the damage, even where TensorRT is absent.
    assert "engine refused" in line and "truncated" in line and str(engine) in line, d.log()[-3000:]
    figures.record("engine_truncated_tensorrt", result="exit 78", log=line.split("edge.daemon ", 1)[-1][:200])
