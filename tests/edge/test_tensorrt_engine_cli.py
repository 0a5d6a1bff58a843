"""Issue #14 item 2: what ``crack-train engine`` names and writes is what the daemon's loader runs.

One builder (edge/backends/tensorrt.py) writes the engine and its sidecar; the trainer's command is
a thin door to it.  TensorRT is the stand-in (tests/edge/trt_standin.py); the files, the card, the
config, the loader and ONNX Runtime behind the stand-in's engine are real.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common import exits
from edge.config import load_config
from edge.loader import StartupError, load_model, probe_model
from trainer.cli import main
from trt_standin import StandIn

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def released(tmp_path):
    for name in ("mcff-student.onnx", "mcff-student.json", "mcff-student-int8.onnx", "mcff-student-int8.json"):
        shutil.copy(REPO / "models" / name, tmp_path / name)
    return tmp_path / "mcff-student.onnx"


def config(engine: Path, tmp_path: Path, **backend):
    return load_config(None, {"model": {"path": str(engine), "inference_size": (64, 64)},
                              "backend": {"name": "tensorrt", "cache_dir": str(tmp_path / "cache"), **backend}})


def test_the_trainers_engine_is_what_the_daemon_loads(monkeypatch, released, tmp_path, capsys):
    si = StandIn("10.3.0").install(monkeypatch)
    assert main(["engine", "--onnx", str(released), "--size", "64x64"]) == 0
    engine = tmp_path / "mcff-student.fp16.engine"
    assert f"engine: {engine}" in capsys.readouterr().out
    side = json.loads((tmp_path / "mcff-student.fp16.engine.json").read_text())
    assert side["onnx"] == "mcff-student.onnx" and side["precision"] == "fp16" and side["compute_capability"] == "8.7"
    model = load_model(config(engine, tmp_path))
    try:
        assert model.backend.name == "tensorrt" and model.backend.model_path == engine
        assert model.card.name == "mcff-student" and model.backend.describe()["precision"] == "fp16"
        probe_model(model)  # what `crack-edge check` and `run` do next
        assert si.builds == 1 and not list((tmp_path / "cache").glob("*.engine"))  # loaded, not rebuilt
    finally:
        model.close()


def test_an_int8_engine_from_the_qdq_sibling_loads_under_its_own_card(monkeypatch, released, tmp_path):
    StandIn("10.3.0").install(monkeypatch)
    int8 = released.with_name("mcff-student-int8.onnx")
    assert main(["engine", "--onnx", str(int8), "--size", "64x64"]) == 0  # the card says int8: the default
    engine = tmp_path / "mcff-student-int8.int8.engine"
    model = load_model(config(engine, tmp_path))
    try:
        assert model.card.precision == "int8" and model.backend.describe()["precision"] == "int8"
    finally:
        model.close()


def test_an_engine_for_another_gpu_or_precision_is_refused_with_78(monkeypatch, released, tmp_path):
    StandIn("10.3.0", gpu_name="Orin (nvgpu)").install(monkeypatch)
    assert main(["engine", "--onnx", str(released), "--size", "64x64", "--precision", "fp32"]) == 0
    engine = tmp_path / "mcff-student.fp32.engine"
    with pytest.raises(StartupError) as e:
        load_model(config(engine, tmp_path, precision="fp16"))
    assert e.value.code == exits.CONFIG and "a fp32 engine; backend.precision is fp16" in str(e.value)
    StandIn("10.3.0", gpu_name="NVIDIA H200", cc=(9, 0)).install(monkeypatch)
    with pytest.raises(StartupError) as e:
        load_model(config(engine, tmp_path))
    assert e.value.code == exits.CONFIG and "built for GPU 'Orin (nvgpu)', this is 'NVIDIA H200'" in str(e.value)


def test_a_refusal_is_78_with_the_version_and_no_traceback(monkeypatch, released, capsys):
    StandIn("11.0.0").install(monkeypatch)
    assert main(["engine", "--onnx", str(released), "--precision", "fp16"]) == 78
    err = capsys.readouterr().err
    assert "TensorRT 11.0.0 removed BuilderFlag.FP16" in err and "Traceback" not in err
