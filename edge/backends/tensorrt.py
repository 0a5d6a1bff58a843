"""TensorRT 10 through pycuda: the Jetson's runtime.

The engine is deserialised once, with one execution context, page-locked host buffers and
device buffers allocated once (again only when a larger shape arrives), and one CUDA stream;
each frame is ``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3`` (the tensor-name
API).  H and W are dynamic through one optimisation profile.

Engines are specific to a TensorRT version and a GPU.  A built engine is cached under a key of
model sha256 + TensorRT version + GPU name (+ precision and profile), written atomically (a
temporary file, then rename), with a JSON sidecar that is checked *before* TensorRT is handed
the bytes: a truncated, corrupt or foreign engine is refused with the reason (and, in the cache,
rebuilt from the ONNX file).  ``tensorrt`` and ``pycuda`` are imported inside ``load()`` only.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from edge.backends.base import Backend, BackendError, BackendOptions
from models.card import sha256_file

log = logging.getLogger(__name__)

ENGINE_FORMAT = 1
SIDECAR_SUFFIX = ".json"
DEFAULT_MIN_HW = (32, 32)
DEFAULT_MAX_HW = (1088, 1920)


class _ProfileOptions(BaseModel, extra="forbid"):
    min: tuple[int, int] | None = None
    opt: tuple[int, int] | None = None
    max: tuple[int, int] | None = None


class Options(BackendOptions):
    """``backend.options`` for TensorRT (its defaults are applied where the options are read, below)."""

    device: int | None = Field(None, ge=0, description="CUDA device index (default 0)")
    workspace_mb: int | None = Field(None, ge=1, description="Builder workspace, MiB (default 1024)")
    profile: _ProfileOptions | None = Field(None, description="Optimisation profile [H, W] sizes: min, opt, max")


class EngineRefused(BackendError):
    """An engine file that must not be given to TensorRT; ``reason`` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: engine refused: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Profile:
    """The optimisation profile's input sizes, [H, W] each (N is always 1)."""
    min_hw: tuple[int, int]
    opt_hw: tuple[int, int]
    max_hw: tuple[int, int]

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return tuple((1, 3, *hw) for hw in (self.min_hw, self.opt_hw, self.max_hw))  # type: ignore[return-value]

    def admits(self, h: int, w: int) -> bool:
        return self.min_hw[0] <= h <= self.max_hw[0] and self.min_hw[1] <= w <= self.max_hw[1]


@dataclass(frozen=True)
class EngineIdentity:
    """What an engine was built from and for; the sidecar stores it, the cache key hashes it."""
    model_sha256: str
    trt_version: str
    gpu_name: str
    precision: str
    profile: Profile

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower() or "gpu"
        return f"{self.model_sha256[:16]}-trt{self.trt_version}-{gpu}-{self.precision}-{digest}"


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + SIDECAR_SUFFIX)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_engine(path: Path, blob: bytes, ident: EngineIdentity) -> None:
    """Engine first, sidecar last: a sidecar exists only beside a complete engine."""
    _atomic_write(path, blob)
    header = {"format": ENGINE_FORMAT, **asdict(ident), "engine_bytes": len(blob),
              "engine_sha256": hashlib.sha256(blob).hexdigest(), "created": time.time()}
    _atomic_write(sidecar_path(path), (json.dumps(header, indent=2) + "\n").encode())


def check_engine(path: Path, trt_version: str | None = None, gpu_name: str | None = None,
                 model_sha256: str | None = None) -> bytes:
    """The engine's bytes if its sidecar says it fits this TensorRT and GPU; else EngineRefused.

    With ``trt_version`` and ``gpu_name`` None (no TensorRT here to ask) only the file's own
    integrity is checked: sidecar present and readable, size and sha256 as recorded.
    """
    side = sidecar_path(path)
    try:
        header = json.loads(side.read_text())
    except FileNotFoundError:
        raise EngineRefused(path, f"no sidecar {side.name}: cannot tell which TensorRT and GPU built it") from None
    except (OSError, json.JSONDecodeError) as e:
        raise EngineRefused(path, f"unreadable sidecar {side.name}: {e}") from None
    if not isinstance(header, dict) or header.get("format") != ENGINE_FORMAT:
        raise EngineRefused(path, f"sidecar format {header.get('format') if isinstance(header, dict) else None!r}, "
                                  f"expected {ENGINE_FORMAT}")
    if trt_version is not None and header.get("trt_version") != trt_version:
        raise EngineRefused(path, f"built with TensorRT {header.get('trt_version')}, this is TensorRT {trt_version}")
    if gpu_name is not None and header.get("gpu_name") != gpu_name:
        raise EngineRefused(path, f"built for GPU {header.get('gpu_name')!r}, this is {gpu_name!r}")
    if model_sha256 and header.get("model_sha256") != model_sha256:
        raise EngineRefused(path, f"built from model {str(header.get('model_sha256'))[:12]}, "
                                  f"not from this one ({model_sha256[:12]})")
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise EngineRefused(path, "engine file missing beside its sidecar") from None
    if len(blob) != header.get("engine_bytes"):
        raise EngineRefused(path, f"truncated or altered: {len(blob)} bytes, the sidecar says {header.get('engine_bytes')}")
    if hashlib.sha256(blob).hexdigest() != header.get("engine_sha256"):
        raise EngineRefused(path, "bytes do not match the sidecar's sha256 (corrupt)")
    return blob


class EngineCache:
    """``<dir>/<key>.engine`` + ``<key>.engine.json``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, ident: EngineIdentity) -> Path:
        return self.directory / f"{ident.key()}.engine"

    def get(self, ident: EngineIdentity) -> bytes | None:
        """A fitting cached engine, or None (absent, or refused: the reason is logged, the file removed)."""
        path = self.path(ident)
        if not path.exists() and not sidecar_path(path).exists():
            return None
        try:
            return check_engine(path, ident.trt_version, ident.gpu_name, ident.model_sha256)
        except EngineRefused as e:
            log.warning("engine cache entry refused path=%s reason=%r action=rebuild", path, e.reason)
            for p in (path, sidecar_path(path)):
                try:
                    p.unlink()
                except OSError:
                    pass
            return None

    def put(self, ident: EngineIdentity, blob: bytes) -> Path:
        path = self.path(ident)
        write_engine(path, blob, ident)
        return path


def profile_from_options(options: dict[str, Any], opt_hw: tuple[int, int]) -> Profile:
    p = options.get("profile") or {}
    opt = tuple(p.get("opt", opt_hw))
    mn = tuple(p.get("min", DEFAULT_MIN_HW))
    mx = tuple(p.get("max", (max(opt[0], DEFAULT_MAX_HW[0]), max(opt[1], DEFAULT_MAX_HW[1]))))
    prof = Profile(mn, opt, mx)  # type: ignore[arg-type]
    if not (mn[0] <= opt[0] <= mx[0] and mn[1] <= opt[1] <= mx[1]):
        raise BackendError(f"backend.options.profile: need min <= opt <= max, got {prof}")
    return prof


class TensorRTBackend(Backend):
    name = "tensorrt"

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None

    def load(self) -> None:
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as e:
            raise BackendError(f"TensorRT backend needs tensorrt and pycuda: {e}") from e
        cuda.init()
        device = cuda.Device(int(self.options.get("device", 0)))
        # The primary context, made current only around each call: inference runs in its own thread.
        self._cuda = cuda
        self._ctx = device.retain_primary_context()
        self._ctx.push()
        try:
            self.gpu_name = device.name()
            self.trt_version = trt.__version__
            self._logger = trt.Logger(trt.Logger.WARNING)
            blob = self._engine_bytes(trt)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(blob)
            if self.engine is None:
                raise BackendError(f"{self.model_path}: TensorRT could not deserialise the engine (see its log above)")
            self.context = self.engine.create_execution_context()
            self.stream = cuda.Stream()
            names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
            for t in (self.card.input_name, self.card.output_name):
                if t not in names:
                    raise BackendError(f"{self.model_path}: tensor {t!r} not in engine tensors {sorted(names)}")
            lo, _, hi = self.engine.get_tensor_profile_shape(self.card.input_name, 0)
            self.profile_range = (tuple(lo[2:]), tuple(hi[2:]))
            self._buffers: dict[str, tuple[Any, Any, int]] = {}
        finally:
            self._ctx.pop()

    def _engine_bytes(self, trt: Any) -> bytes:
        if self.model_path.suffix == ".engine":
            # A prebuilt engine: refuse it (config error) rather than let TensorRT crash on it.
            return check_engine(self.model_path, self.trt_version, self.gpu_name)
        precision = str(self.options.get("precision") or self.card.precision)
        ident = EngineIdentity(self.card.sha256 or sha256_file(self.model_path), self.trt_version, self.gpu_name,
                               precision, profile_from_options(self.options, tuple(self.card.input_size)))
        cache = EngineCache(self.options.get("cache_dir") or self.model_path.parent)
        blob = cache.get(ident)
        if blob is not None:
            log.info("engine from cache path=%s", cache.path(ident))
            return blob
        t0 = time.monotonic()
        blob = build_engine(trt, self._logger, self.model_path, self.card, precision, ident.profile,
                            int(self.options.get("workspace_mb", 1024)) << 20)
        path = cache.put(ident, blob)
        log.info("engine built path=%s precision=%s seconds=%.1f", path, precision, time.monotonic() - t0)
        return blob

    def _buffer(self, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
        n = int(np.prod(shape))
        host, dev, cap = self._buffers.get(name, (None, None, 0))
        if n > cap:  # grow only: steady frames never allocate
            host = self._cuda.pagelocked_empty(n, np.float32)
            dev = self._cuda.mem_alloc(n * 4)
            self._buffers[name] = (host, dev, n)
        return host[:n], dev

    def infer(self, batch: np.ndarray) -> np.ndarray:
        _, _, h, w = batch.shape
        (lh, lw), (hh, hw) = self.profile_range
        if not (lh <= h <= hh and lw <= w <= hw):
            raise BackendError(f"input {h}x{w} is outside the engine's profile {lh}x{lw}..{hh}x{hw}; "
                               "rebuild with backend.options.profile")
        cuda, inp, out = self._cuda, self.card.input_name, self.card.output_name
        self._ctx.push()
        try:
            self.context.set_input_shape(inp, tuple(batch.shape))
            out_shape = tuple(self.context.get_tensor_shape(out))
            h_in, d_in = self._buffer(inp, tuple(batch.shape))
            h_out, d_out = self._buffer(out, out_shape)
            np.copyto(h_in, batch.reshape(-1))
            cuda.memcpy_htod_async(d_in, h_in, self.stream)
            self.context.set_tensor_address(inp, int(d_in))
            self.context.set_tensor_address(out, int(d_out))
            if not self.context.execute_async_v3(self.stream.handle):
                raise BackendError("TensorRT execute_async_v3 failed")
            cuda.memcpy_dtoh_async(h_out, d_out, self.stream)
            self.stream.synchronize()
            return h_out.reshape(out_shape).copy()  # the host buffer is reused by the next frame
        finally:
            self._ctx.pop()

    def close(self) -> None:
        if getattr(self, "_ctx", None) is None:
            return
        self._ctx.push()
        try:
            self._buffers = {}
            self.context = None
            self.engine = None
            self.stream = None
        finally:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "version": getattr(self, "trt_version", None),
                "gpu": getattr(self, "gpu_name", None),
                "precision": str(self.options.get("precision") or self.card.precision)}


def build_engine(trt: Any, logger: Any, onnx_path: Path, card: Any, precision: str, profile: Profile,
                 workspace_bytes: int) -> bytes:
    """ONNX file -> serialised engine with one optimisation profile over H and W."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"{onnx_path}: TensorRT cannot parse the ONNX file: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 QDQ models keep their unquantised layers in fp16
    if precision == "int8" and card.precision != "int8":
        raise BackendError(f"{onnx_path}: int8 needs a QDQ model (crack-train quantize); this one is {card.precision}")
    prof = builder.create_optimization_profile()
    prof.set_shape(card.input_name, *profile.shapes())
    config.add_optimization_profile(prof)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"{onnx_path}: TensorRT engine build failed (see its log above)")
    return bytes(serialized)
