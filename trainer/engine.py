"""``crack-train engine``: the trainer's door to the one TensorRT engine builder (edge/backends/tensorrt.py).

The engine and its sidecar are written exactly as the daemon's loader accepts them
(``NAME.PRECISION.engine`` + ``NAME.PRECISION.engine.json``, which names ``NAME.onnx`` and so the
card ``NAME.json``).  INT8 is built from the Q/DQ model ``crack-train quantize`` makes (calibrated
through models/preprocess.py there); TensorRT's implicit-INT8 calibrators are deprecated since
10.1 and removed in 11, so none is used here.  Without TensorRT the command stops with 69; a
refusal (the version, the precision, the model) stops it with 78 and the reason.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from trainer.errors import ConfigError, MissingInput, ToolUnavailable

PRECISIONS = ("fp16", "fp32", "bf16", "int8")


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def build_engine(onnx_path: str | Path, out: str | Path | None = None, precision: str | None = None,
                 size: tuple[int, int] | None = None, max_size: tuple[int, int] | None = None,
                 workspace_mib: int = 1024, device: int = 0, opt_level: int | None = None) -> Path:
    """Build and write the engine and its sidecar; returns the engine's path."""
    from edge.backends.base import BackendError, BackendUnavailable
    from edge.backends.tensorrt import build_engine_file

    onnx_path = Path(onnx_path)
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if not onnx_path.is_file():
        raise MissingInput(f"{onnx_path}: ONNX file not found")
    try:
        path, _ = build_engine_file(onnx_path, out, precision, size, max_size, workspace_mib, device, opt_level)
    except BackendUnavailable as e:
        raise ToolUnavailable(f"TensorRT is not installed on this machine ({e}): build the engine on the "
                              "target (e.g. the Jetson, with JetPack's TensorRT and pycuda)") from None
    except BackendError as e:
        raise ConfigError(str(e)) from None
    return path
