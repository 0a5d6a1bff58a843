"""``crack-train engine``: a TensorRT engine from an exported ONNX file, FP16 or INT8.

FP16 needs TensorRT's Python package or ``trtexec``.  INT8 of a plain float ONNX file is calibrated
with TensorRT's entropy calibrator on training images (resized to the input size and normalised as
the daemon does) and leaves a calibration cache beside the engine, reused on the next build; an ONNX
file that already carries QuantizeLinear/DequantizeLinear nodes (``crack-train quantize``) is built
as is, without calibration.  Where TensorRT is absent the command stops with exit status 69.
"""
from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from trainer.data import Pair, normalise, read_image
from trainer.errors import ConfigError, DataError, MissingInput, ToolUnavailable

log = logging.getLogger(__name__)
PRECISIONS = ("fp16", "int8")


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _has_qdq(onnx_path: Path) -> bool:
    import onnx

    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in onnx.load(str(onnx_path)).graph.node)


def calibration_batches(pairs: Sequence[Pair], size: tuple[int, int], limit: int) -> list[np.ndarray]:
    """Up to ``limit`` training images as [1,3,H,W] float32, preprocessed exactly as the daemon does."""
    h, w = size
    return [normalise(cv2.resize(read_image(p.image), (w, h), interpolation=cv2.INTER_LINEAR))[None]
            for p in list(pairs)[:limit]]


def _shapes(size: tuple[int, int], max_size: tuple[int, int] | None):
    h, w = size
    opt = (1, 3, h, w)
    if max_size is None:
        return opt, opt, opt
    return (1, 3, 32, 32), opt, (1, 3, *max_size)


def build_with_trtexec(onnx_path: Path, out: Path, size: tuple[int, int], max_size: tuple[int, int] | None) -> Path:
    lo, opt, hi = _shapes(size, max_size)
    fmt = lambda s: "image:" + "x".join(map(str, s))  # noqa: E731
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={out}", "--fp16",
           f"--minShapes={fmt(lo)}", f"--optShapes={fmt(opt)}", f"--maxShapes={fmt(hi)}"]
    log.info("event=trtexec cmd=%s", " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-15:])
        raise DataError(f"{onnx_path}: trtexec failed (status {r.returncode}):\n{tail}")
    return out


def build_engine(onnx_path: str | Path, out: str | Path, precision: str = "fp16", size: tuple[int, int] = (448, 448),
                 max_size: tuple[int, int] | None = None, calib_pairs: Sequence[Pair] = (), calib_images: int = 64,
                 calib_cache: str | Path | None = None, workspace_mib: int = 1024) -> Path:
    """Build and save the engine; returns its path."""
    onnx_path, out = Path(onnx_path), Path(out)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: choose {' or '.join(PRECISIONS)}")
    if not onnx_path.exists():
        raise MissingInput(f"{onnx_path}: ONNX file not found")
    if not tensorrt_available():
        if precision == "fp16" and shutil.which("trtexec"):
            return build_with_trtexec(onnx_path, out, size, max_size)
        raise ToolUnavailable("TensorRT is not installed on this machine (no `tensorrt` Python package"
                              + ("" if precision == "int8" else " and no `trtexec`")
                              + "): build the engine on the target (e.g. the Jetson, with JetPack's TensorRT)")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DataError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    lo, opt, hi = _shapes(size, max_size)
    prof = builder.create_optimization_profile()
    prof.set_shape("image", lo, opt, hi)
    config.add_optimization_profile(prof)
    config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers TensorRT cannot quantise fall back to FP16, not FP32
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if not _has_qdq(onnx_path):
            cache = Path(calib_cache) if calib_cache else out.with_suffix(".calib")
            batches = calibration_batches(calib_pairs, size, calib_images) if not cache.exists() else []
            if not cache.exists() and not batches:
                raise ConfigError("INT8 calibration needs training images (--data) or an existing --calib-cache")
            config.int8_calibrator = _calibrator(trt, batches, cache)
            config.set_calibration_profile(prof)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DataError(f"{onnx_path}: TensorRT could not build a {precision} engine (see its log above)")
    out.write_bytes(bytes(serialized))
    log.info("event=engine onnx=%s engine=%s precision=%s tensorrt=%s", onnx_path, out, precision, trt.__version__)
    return out


def _calibrator(trt, batches: list[np.ndarray], cache: Path):
    """An entropy calibrator feeding ``batches`` through CUDA memory owned by PyTorch."""
    try:
        import torch
    except ImportError as e:
        raise ToolUnavailable("INT8 calibration needs PyTorch with CUDA for its device buffers") from e
    if batches and not torch.cuda.is_available():
        raise ToolUnavailable("INT8 calibration needs a CUDA GPU (torch.cuda is not available)")

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batches = list(batches)
            self.current = None

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            if not self.batches:
                return None
            self.current = torch.from_numpy(self.batches.pop(0)).cuda().contiguous()
            return [int(self.current.data_ptr())]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.exists() else None

        def write_calibration_cache(self, data) -> None:
            cache.write_bytes(bytes(data))
            log.info("event=calibration_cache path=%s bytes=%d", cache, len(bytes(data)))

    return Calibrator()
