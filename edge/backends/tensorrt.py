"""TensorRT 10 / 11 through pycuda: the Jetson's runtime, and the one TensorRT engine builder.

Supported: TensorRT 10.0 and later 10.x (JetPack 6.1 and 6.2 ship 10.3; JetPack 6.0's 8.6 is
refused), and 11.x within what 11 can build (strongly typed only: see :func:`build_plan`).
None of it has run on real TensorRT yet: everything that *decides* (the build plan per version
and precision, the profile, the cache key, the refusals, every return value checked) is tested
against a stand-in with the TensorRT API's shape (tests/edge/trt_standin.py).

How each version is asked for a precision (the TensorRT 10.x and 11.x documentation):

* up to 10.11, weakly typed networks with builder flags: FP16; INT8 *and* FP16 for a Q/DQ model
  (10.3 refuses to build a Q/DQ network without INT8); BF16; TF32 cleared for fp32, since it is on
  by default and would make "fp32" differ from ONNX Runtime by more than float rounding;
* from 10.12 (weak typing deprecated) and in 11 (the FP16/INT8/BF16 flags removed), strongly
  typed networks where the model's own types give the precision: fp32 from an fp32 file, int8
  from a Q/DQ file, fp16 from an fp16 file.  fp16 or bf16 from an fp32 file has no strongly
  typed route without rewriting the model (ModelOpt AutoCast): on 10.12+ the deprecated flag is
  still used (logged), on 11 it is refused with the reason and what to do.

The engine is deserialised once, with one execution context, page-locked host buffers and device
buffers for *every* I/O tensor in the engine's own dtypes (grown only when a larger shape comes),
and one CUDA stream; one warm-up inference at the daemon's inference size runs at load.  Engines
are specific to a TensorRT build and a GPU: a built engine is cached under a key of model sha256,
TensorRT version (with its build number where it can be found), GPU name and compute capability,
precision and profile, written atomically with a JSON sidecar that is checked before TensorRT
is handed the bytes; a cached engine TensorRT cannot deserialise is removed and rebuilt.
``tensorrt`` and ``pycuda`` are imported inside :func:`import_runtime` only.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, Field

from edge.backends.base import Backend, BackendError, BackendOptions, BackendUnavailable
from models.card import sha256_file

log = logging.getLogger(__name__)

ENGINE_FORMAT = 2
SIDECAR_SUFFIX = ".json"
DEFAULT_MIN_HW = (32, 32)
DEFAULT_MAX_HW = (1088, 1920)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

MIN_VERSION = (10, 0)        # the tensor-name API with explicit batch as the only mode
STRONG_TYPING_FROM = (10, 12)  # weak typing deprecated; strongly typed is the documented route
FLAGS_REMOVED_IN = (11, 0)   # BuilderFlag.FP16 / INT8 / BF16 gone; every network strongly typed
NEWEST_MAJOR = 11
SUPPORTED = ("TensorRT 10.0-10.x (JetPack 6.1/6.2: 10.3) for fp32, fp16, bf16 and int8 (Q/DQ); "
             "TensorRT 11.x for fp32, int8 (Q/DQ) and fp16 from an fp16 ONNX file")
BF16_MIN_CC = (8, 0)         # Ampere and later (Orin is 8.7)


class _ProfileOptions(BaseModel, extra="forbid"):
    min: tuple[int, int] | None = None
    opt: tuple[int, int] | None = None
    max: tuple[int, int] | None = None


class Options(BackendOptions):
    """``backend.options`` for TensorRT (its defaults are applied where the options are read, below)."""

    device: int | None = Field(None, ge=0, description="CUDA device index (default 0)")
    workspace_mb: int | None = Field(None, ge=1, description="Builder workspace, MiB (default 1024)")
    profile: _ProfileOptions | None = Field(None, description="Optimisation profile [H, W] sizes: min, opt, max")
    opt_level: int | None = Field(None, ge=0, le=5, description="Builder optimisation level (default TensorRT's, 3)")


class EngineRefused(BackendError):
    """An engine file that must not be given to TensorRT; ``reason`` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: engine refused: {reason}")
        self.path = path
        self.reason = reason


# ------------------------------------------------------------------ versions and the build plan

def parse_version(text: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); the leading numeric fields only."""
    parts = []
    for p in str(text).split("."):
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group()))
        if m.group() != p:
            break
    if len(parts) < 2:
        raise BackendError(f"TensorRT version {text!r} cannot be read (expected MAJOR.MINOR...)")
    return tuple(parts)


def check_version(version: str) -> tuple[int, ...]:
    """The parsed version, or BackendError naming it and what is supported."""
    v = parse_version(version)
    if v[:2] < MIN_VERSION:
        raise BackendError(f"TensorRT {version} is too old: this backend needs TensorRT 10 or later "
                           f"(JetPack 6.1 or later on a Jetson); supported: {SUPPORTED}")
    if v[0] > NEWEST_MAJOR:
        raise BackendError(f"TensorRT {version} is newer than this backend knows; supported: {SUPPORTED}")
    return v


@dataclass(frozen=True)
class BuildPlan:
    """How to ask this TensorRT for this precision: the network mode and the builder flags."""
    precision: str
    strongly_typed: bool
    set_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    note: str = ""


def default_precision(version: str, model_precision: str) -> tuple[str, str]:
    """(precision, why) when the config names none: fp16 on a GPU, unless the model fixes it."""
    if model_precision in ("int8", "fp16"):
        return model_precision, f"the model is {model_precision}"
    if parse_version(version)[:2] >= FLAGS_REMOVED_IN:
        return "fp32", (f"TensorRT {version} builds only strongly typed networks and this model is fp32 "
                        "(fp16 needs an fp16 ONNX file)")
    return "fp16", "the default on a GPU"


def build_plan(version: str, precision: str, model_precision: str,
               compute_capability: tuple[int, int] | None = None) -> BuildPlan:
    """The build plan, or BackendError saying why this TensorRT cannot build this precision from this model."""
    v = check_version(version)[:2]
    if precision not in PRECISIONS:
        raise BackendError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if model_precision not in ("fp32", "fp16", "int8"):
        raise BackendError(f"model precision {model_precision!r} (card): expected fp32, fp16 or int8")
    if model_precision in ("int8", "fp16") and precision != model_precision:
        # Its types are in the graph: a Q/DQ or fp16 model built as another precision is mislabelled
        # (strongly typed) or fails to build (10.3: Q/DQ without the INT8 flag).
        raise BackendError(f"the model is {model_precision} ({'Q/DQ' if model_precision == 'int8' else 'fp16 ONNX'}); "
                           f"precision {precision} needs the fp32 model")
    if precision == "int8" and model_precision != "int8":
        raise BackendError("precision int8 needs an INT8 Q/DQ model (crack-train quantize makes NAME-int8.onnx); "
                           "implicit INT8 calibration is deprecated since TensorRT 10.1 and removed in 11")
    strong = v >= STRONG_TYPING_FROM
    no_tf32 = ("TF32",) if precision == "fp32" else ()
    if precision == "bf16":
        if compute_capability is not None and tuple(compute_capability) < BF16_MIN_CC:
            raise BackendError(f"precision bf16 needs compute capability {BF16_MIN_CC[0]}.{BF16_MIN_CC[1]} or "
                               f"later; this GPU is {compute_capability[0]}.{compute_capability[1]}")
        if v >= FLAGS_REMOVED_IN:
            raise BackendError(f"TensorRT {version} removed BuilderFlag.BF16 and builds only strongly typed "
                               "networks: bf16 needs a bf16 ONNX file (ModelOpt AutoCast); choose precision fp32")
        return BuildPlan("bf16", False, ("BF16",), (),
                         "weak typing, deprecated in 10.12+" if strong else "")
    if precision == model_precision:  # fp32 from fp32, fp16 from fp16, int8 from Q/DQ
        if strong:
            return BuildPlan(precision, True, (), no_tf32)
        if precision == "int8":
            # 10.3 will not build a Q/DQ network without INT8; FP16 lets the unquantised layers run fp16.
            return BuildPlan("int8", False, ("INT8", "FP16"))
        if precision == "fp16":
            return BuildPlan("fp16", True)  # an fp16 file: its own types, on any 10.x
        return BuildPlan("fp32", False, (), no_tf32)
    # fp16 from an fp32 file: only the FP16 flag can do it.
    if v >= FLAGS_REMOVED_IN:
        raise BackendError(f"TensorRT {version} removed BuilderFlag.FP16 and builds only strongly typed "
                           "networks: fp16 needs an fp16 ONNX file (python -m modelopt.onnx.autocast); "
                           "choose precision fp32 for this fp32 model")
    return BuildPlan("fp16", False, ("FP16",), (), "weak typing, deprecated in 10.12+" if strong else "")


# ------------------------------------------------------------------ identity, sidecar, cache

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
    compute_capability: str = ""
    strongly_typed: bool = False
    flags: tuple[str, ...] = field(default_factory=tuple)

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower() or "gpu"
        sm = "sm" + self.compute_capability.replace(".", "") if self.compute_capability else "sm-unknown"
        return f"{self.model_sha256[:16]}-trt{self.trt_version}-{gpu}-{sm}-{self.precision}-{digest}"


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + SIDECAR_SUFFIX)


def default_engine_path(onnx_path: str | Path, precision: str) -> Path:
    """``NAME.onnx`` -> ``NAME.PRECISION.engine``; its sidecar names NAME.onnx, whose card the daemon reads."""
    return Path(onnx_path).with_suffix(f".{precision}.engine")


def onnx_for_engine(engine: str | Path) -> Path:
    """The ONNX file (and so the card NAME.json) an engine was built from: the sidecar's ``onnx``
    entry (a bare name beside the engine), else ``NAME.onnx`` for ``NAME.engine``."""
    engine = Path(engine)
    try:
        name = json.loads(sidecar_path(engine).read_text()).get("onnx")
    except (OSError, ValueError, AttributeError):
        name = None
    if isinstance(name, str) and name.endswith(".onnx") and name == Path(name).name and name not in (".onnx",):
        return engine.with_name(name)
    return engine.with_suffix(".onnx")


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


def write_engine(path: Path, blob: bytes, ident: EngineIdentity, onnx_name: str | None = None) -> None:
    """Engine first, sidecar last: a sidecar exists only beside a complete engine."""
    _atomic_write(path, blob)
    header = {"format": ENGINE_FORMAT, **asdict(ident), "engine_bytes": len(blob),
              "engine_sha256": hashlib.sha256(blob).hexdigest(), "created": time.time()}
    if onnx_name:
        header["onnx"] = onnx_name
    _atomic_write(sidecar_path(path), (json.dumps(header, indent=2) + "\n").encode())


def read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    try:
        header = json.loads(side.read_text())
    except FileNotFoundError:
        raise EngineRefused(path, f"no sidecar {side.name}: cannot tell which TensorRT and GPU built it") from None
    except (OSError, ValueError) as e:
        raise EngineRefused(path, f"unreadable sidecar {side.name}: {e}") from None
    if not isinstance(header, dict) or header.get("format") != ENGINE_FORMAT:
        raise EngineRefused(path, f"sidecar format {header.get('format') if isinstance(header, dict) else None!r}, "
                                  f"expected {ENGINE_FORMAT}")
    return header


def check_engine(path: Path, trt_version: str | None = None, gpu_name: str | None = None,
                 model_sha256: str | None = None, compute_capability: str | None = None) -> bytes:
    """The engine's bytes if its sidecar says it fits this TensorRT and GPU; else EngineRefused.

    With ``trt_version`` and ``gpu_name`` None (no TensorRT here to ask) only the file's own
    integrity is checked: sidecar present and readable, size and sha256 as recorded.
    """
    header = read_sidecar(path)
    if trt_version is not None and header.get("trt_version") != trt_version:
        raise EngineRefused(path, f"built with TensorRT {header.get('trt_version')}, this is TensorRT {trt_version}")
    if gpu_name is not None and header.get("gpu_name") != gpu_name:
        raise EngineRefused(path, f"built for GPU {header.get('gpu_name')!r}, this is {gpu_name!r}")
    if compute_capability is not None and header.get("compute_capability") != compute_capability:
        raise EngineRefused(path, f"built for compute capability {header.get('compute_capability')}, "
                                  f"this GPU is {compute_capability}")
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
            return check_engine(path, ident.trt_version, ident.gpu_name, ident.model_sha256,
                                ident.compute_capability)
        except EngineRefused as e:
            log.warning("engine cache entry refused path=%s reason=%r action=rebuild", path, e.reason)
            self.remove(ident)
            return None

    def remove(self, ident: EngineIdentity) -> None:
        path = self.path(ident)
        for p in (path, sidecar_path(path)):
            try:
                p.unlink()
            except OSError:
                pass

    def put(self, ident: EngineIdentity, blob: bytes, onnx_name: str | None = None) -> Path:
        path = self.path(ident)
        write_engine(path, blob, ident, onnx_name)
        return path


def _hw(value: Any, what: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise BackendError(f"backend.options.profile.{what}: need [H, W], got {value!r}") from None
    if h <= 0 or w <= 0:
        raise BackendError(f"backend.options.profile.{what}: need positive [H, W], got {[h, w]}")
    return h, w


def profile_from_options(options: dict[str, Any], opt_hw: tuple[int, int]) -> Profile:
    """``backend.options.profile`` over the defaults; ``opt_hw`` is the size the daemon will run."""
    p = options.get("profile") or {}
    if not isinstance(p, dict):
        raise BackendError(f"backend.options.profile: need a table with min/opt/max, got {p!r}")
    opt = _hw(p.get("opt", opt_hw), "opt")
    mn = _hw(p.get("min", DEFAULT_MIN_HW), "min")
    mx = _hw(p.get("max", (max(opt[0], DEFAULT_MAX_HW[0]), max(opt[1], DEFAULT_MAX_HW[1]))), "max")
    prof = Profile(mn, opt, mx)
    if not (mn[0] <= opt[0] <= mx[0] and mn[1] <= opt[1] <= mx[1]):
        raise BackendError(f"backend.options.profile: need min <= opt <= max, got {prof}")
    return prof


# ------------------------------------------------------------------ runtime: import, version, device

def import_runtime() -> tuple[Any, Any]:
    """(tensorrt, pycuda.driver), or BackendUnavailable."""
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable(f"TensorRT backend needs tensorrt and pycuda: {e}") from e
    return trt, cuda


DIST_NAMES = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu12-bindings", "tensorrt-cu13-bindings",
              "tensorrt-bindings", "tensorrt-libs", "tensorrt-cu12-libs", "tensorrt-cu13-libs")


def _lib_build(trt: Any) -> int | None:
    """getInferLibBuildVersion() of the libnvinfer this process loaded, where there is one."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "libnvinfer.so" in line}
        for lib in sorted(libs):
            fn = getattr(ctypes.CDLL(lib), "getInferLibBuildVersion", None)
            if fn is not None:
                fn.restype = ctypes.c_int32
                return int(fn())
    except (OSError, ValueError, IndexError):
        pass
    return None


def full_version(trt: Any, dist_version: Callable[[str], str] = importlib.metadata.version,
                 lib_build: Callable[[Any], int | None] = _lib_build) -> str:
    """TensorRT's version with its build number where one can be found (a package's version, or
    the loaded library's); ``trt.__version__`` alone says only MAJOR.MINOR.PATCH."""
    short = str(trt.__version__)
    best = short
    for name in DIST_NAMES:
        try:
            v = dist_version(name)
        except Exception:  # PackageNotFoundError, or a broken install's metadata
            continue
        if v.startswith(short) and len(v) > len(best):
            best = v
    if best == short:
        build = lib_build(trt)
        if build:
            best = f"{short}.{build}" if short.count(".") == 2 else short
    return best


class _PrimaryContext:
    """The device's primary context, current only inside ``with`` (inference runs in its own thread)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def __enter__(self) -> None:
        self.ctx.push()

    def __exit__(self, *exc: Any) -> None:
        self.ctx.pop()


def _device(cuda: Any, index: int) -> tuple[Any, str, tuple[int, int]]:
    """(retained primary context, GPU name, compute capability)."""
    cuda.init()
    try:
        device = cuda.Device(index)
    except Exception as e:  # pycuda raises its own LogicError for a missing device
        raise BackendError(f"backend.options.device={index}: no such CUDA device ({e})") from None
    cc = tuple(int(v) for v in device.compute_capability())[:2]
    return device.retain_primary_context(), str(device.name()), cc  # type: ignore[return-value]


# ------------------------------------------------------------------ the one engine builder

def build_serialized(trt: Any, logger: Any, onnx_path: Path, input_name: str, plan: BuildPlan, profile: Profile,
                     workspace_bytes: int, opt_level: int | None = None) -> bytes:
    """ONNX file -> serialised engine, as ``plan`` says, with one optimisation profile over H and W."""
    version = str(trt.__version__)

    def made(obj: Any, what: str) -> Any:
        if obj is None:  # TensorRT returns None (and logs why) where it cannot make one
            raise BackendError(f"TensorRT {version} could not create {what} (out of memory? see its log above)")
        return obj

    try:
        builder = made(trt.Builder(logger), "a builder")
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
        network = made(builder.create_network(flags), "a network")
        parser = made(trt.OnnxParser(network, logger), "an ONNX parser")
        # From the file, not its bytes: the parser then finds external-data weights beside it.
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"{onnx_path}: TensorRT {version} cannot parse the ONNX file: {errors or 'no reason given'}")
        inputs = [network.get_input(i).name for i in range(network.num_inputs)]
        if inputs != [input_name]:
            raise BackendError(f"{onnx_path}: network inputs {inputs}, expected exactly [{input_name!r}] (the card's input_name)")
        config = made(builder.create_builder_config(), "a builder config")
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
        for name in plan.set_flags:
            config.set_flag(getattr(trt.BuilderFlag, name))
        for name in plan.clear_flags:
            flag = getattr(trt.BuilderFlag, name, None)
            if flag is not None:
                config.clear_flag(flag)
        if opt_level is not None:
            config.builder_optimization_level = int(opt_level)
        prof = made(builder.create_optimization_profile(), "an optimisation profile")
        if prof.set_shape(input_name, *profile.shapes()) is False:
            raise BackendError(f"{onnx_path}: TensorRT {version} refused the profile {profile}")
        if config.add_optimization_profile(prof) < 0:
            raise BackendError(f"{onnx_path}: TensorRT {version} refused the profile {profile} (invalid shapes)")
        serialized = builder.build_serialized_network(network, config)
    except AttributeError as e:  # an API this TensorRT does not have: a refusal, not a traceback
        raise BackendError(f"TensorRT {version} lacks an API this backend uses ({e}); supported: {SUPPORTED}") from None
    if serialized is None:
        raise BackendError(f"{onnx_path}: TensorRT {version} engine build failed "
                           f"(precision {plan.precision}, flags {list(plan.set_flags)}, strongly typed "
                           f"{plan.strongly_typed}; see its log above)")
    return bytes(serialized)


def resolve_precision(asked: str | None, version: str, model_precision: str,
                      compute_capability: tuple[int, int] | None) -> BuildPlan:
    """The plan for the asked precision, or for the default one (logged with why)."""
    if asked:
        return build_plan(version, asked, model_precision, compute_capability)
    precision, why = default_precision(version, model_precision)
    log.info("event=trt_precision precision=%s reason=%r", precision, why)
    return build_plan(version, precision, model_precision, compute_capability)


def _identity(model_sha: str, version: str, gpu: str, cc: tuple[int, int], plan: BuildPlan,
              profile: Profile) -> EngineIdentity:
    return EngineIdentity(model_sha, version, gpu, plan.precision, profile, f"{cc[0]}.{cc[1]}",
                          plan.strongly_typed, tuple(plan.set_flags))


def build_engine_file(onnx_path: str | Path, out: str | Path | None = None, precision: str | None = None,
                      size: tuple[int, int] | None = None, max_size: tuple[int, int] | None = None,
                      workspace_mib: int = 1024, device: int = 0, opt_level: int | None = None) -> tuple[Path, EngineIdentity]:
    """``crack-train engine``: NAME.onnx -> NAME.PRECISION.engine + its sidecar, as the daemon loads it.

    The profile is ``size`` (default: the card's input size) alone, or 32x32 .. ``max_size`` with
    ``size`` optimal.  Raises BackendUnavailable (no TensorRT here) or BackendError (a refusal).
    """
    from models.card import CardError, load_card

    onnx_path = Path(onnx_path)
    try:
        card = load_card(onnx_path)
    except CardError as e:
        raise BackendError(str(e)) from None
    trt, cuda = import_runtime()
    opt = tuple(size or card.input_size)
    profile = (Profile(opt, opt, opt) if max_size is None  # type: ignore[arg-type]
               else profile_from_options({"profile": {"opt": list(opt), "max": list(max_size)}}, opt))  # type: ignore[arg-type]
    ctx, gpu, cc = _device(cuda, device)
    try:
        with _PrimaryContext(ctx):
            version = full_version(trt)
            plan = resolve_precision(precision, version, card.precision, cc)
            logger = trt.Logger(trt.Logger.WARNING)
            t0 = time.monotonic()
            blob = build_serialized(trt, logger, onnx_path, card.input_name, plan, profile, workspace_mib << 20, opt_level)
            ident = _identity(card.sha256 or sha256_file(onnx_path), version, gpu, cc, plan, profile)
            path = Path(out) if out else default_engine_path(onnx_path, plan.precision)
            write_engine(path, blob, ident, onnx_path.name)
            log.info("event=engine onnx=%s engine=%s precision=%s tensorrt=%s gpu=%r sm=%s seconds=%.1f", onnx_path,
                     path, plan.precision, version, gpu, ident.compute_capability, time.monotonic() - t0)
    finally:
        ctx.detach()
    return path, ident


# ------------------------------------------------------------------ the backend

class TensorRTBackend(Backend):
    name = "tensorrt"

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None

    def load(self) -> None:
        trt, cuda = import_runtime()
        self._trt, self._cuda = trt, cuda
        self._buffers: dict[str, tuple[Any, Any, int]] = {}
        self.context = self.engine = self._runtime = self.stream = None
        self._ctx, self.gpu_name, cc = _device(cuda, int(self.options.get("device", 0)))
        self.compute_capability = f"{cc[0]}.{cc[1]}"
        try:
            with _PrimaryContext(self._ctx):
                self.trt_version = full_version(trt)
                check_version(self.trt_version)
                self._logger = trt.Logger(trt.Logger.WARNING)
                self._runtime = trt.Runtime(self._logger)
                if self._runtime is None:
                    raise BackendError(f"TensorRT {self.trt_version}: could not create a runtime (see its log above)")
                self.engine = self._load_engine(trt, cc)
                self._bind()
                self.context = self.engine.create_execution_context()
                if self.context is None:
                    raise BackendError(f"{self.model_path}: TensorRT could not create an execution context "
                                       "(out of GPU memory? see its log above)")
                self.stream = cuda.Stream()
            self._warm_up()
        except AttributeError as e:  # a TensorRT whose API differs: a refusal naming it, not a traceback
            self.close()
            raise BackendError(f"TensorRT {getattr(self, 'trt_version', '?')} lacks an API this backend uses ({e}); "
                               f"supported: {SUPPORTED}") from None
        except BaseException:
            self.close()
            raise

    # -- the engine: prebuilt, cached, or built now

    def _load_engine(self, trt: Any, cc: tuple[int, int]) -> Any:
        if self.model_path.suffix == ".engine":
            return self._prebuilt()
        asked = self.options.get("precision")
        plan = resolve_precision(str(asked) if asked else None, self.trt_version, self.card.precision, cc)
        self.precision = plan.precision
        warm = self.options.get("warm_size")
        profile = profile_from_options(self.options, tuple(warm) if warm else tuple(self.card.input_size))
        ident = _identity(self.card.sha256 or sha256_file(self.model_path), self.trt_version, self.gpu_name, cc,
                          plan, profile)
        cache = EngineCache(self.options.get("cache_dir") or self.model_path.parent)
        blob = cache.get(ident)
        if blob is not None:
            engine = self._runtime.deserialize_cuda_engine(blob)
            if engine is not None:
                log.info("event=engine_cached path=%s", cache.path(ident))
                return engine
            log.warning("engine cache entry refused path=%s reason=%r action=rebuild", cache.path(ident),
                        f"TensorRT {self.trt_version} could not deserialise it")
            cache.remove(ident)
        t0 = time.monotonic()
        blob = build_serialized(trt, self._logger, self.model_path, self.card.input_name, plan, profile,
                                int(self.options.get("workspace_mb", 1024)) << 20, self.options.get("opt_level"))
        path = cache.put(ident, blob, self.model_path.name)
        log.info("event=engine_built path=%s precision=%s strongly_typed=%s flags=%s seconds=%.1f", path,
                 plan.precision, plan.strongly_typed, ",".join(plan.set_flags) or "-", time.monotonic() - t0)
        engine = self._runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise BackendError(f"{self.model_path}: TensorRT {self.trt_version} could not deserialise the engine "
                               "it has just built (see its log above)")
        return engine

    def _prebuilt(self) -> Any:
        blob = check_engine(self.model_path, self.trt_version, self.gpu_name, self.card.sha256 or None,
                            self.compute_capability)
        header = read_sidecar(self.model_path)
        self.precision = str(header.get("precision"))
        asked = self.options.get("precision")
        if asked and asked != self.precision:
            raise EngineRefused(self.model_path, f"a {self.precision} engine; backend.precision is {asked}")
        engine = self._runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise EngineRefused(self.model_path, f"TensorRT {self.trt_version} could not deserialise it (see its log above)")
        return engine

    def _bind(self) -> None:
        """Every I/O tensor with its mode and dtype; exactly one input, the card's, and the card's output."""
        trt, e = self._trt, self.engine
        self.tensors: dict[str, tuple[bool, Any]] = {}
        for i in range(e.num_io_tensors):
            name = e.get_tensor_name(i)
            is_input = e.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            self.tensors[name] = (is_input, np.dtype(trt.nptype(e.get_tensor_dtype(name))))
        inputs = [n for n, (inp, _) in self.tensors.items() if inp]
        if inputs != [self.card.input_name]:
            raise BackendError(f"{self.model_path}: engine inputs {inputs}, expected exactly [{self.card.input_name!r}]")
        if self.card.output_name not in self.tensors or self.tensors[self.card.output_name][0]:
            raise BackendError(f"{self.model_path}: output {self.card.output_name!r} not among the engine's "
                               f"tensors {sorted(self.tensors)}")
        lo, opt, hi = (tuple(int(d) for d in dims) for dims in e.get_tensor_profile_shape(self.card.input_name, 0))
        self.profile_range = (lo[2:], hi[2:])
        self.profile_opt = opt[2:]

    def _warm_up(self) -> None:
        """One inference at the size the daemon runs (the first frame is then not the slow one, and a
        size outside a prebuilt engine's profile is refused at start-up, not on every frame)."""
        warm = self.options.get("warm_size")
        h, w = tuple(warm) if warm else self.profile_opt
        t0 = time.monotonic()
        self.infer(np.zeros((1, 3, h, w), np.float32))
        log.info("event=trt_warmup size=%dx%d ms=%.1f", h, w, (time.monotonic() - t0) * 1e3)

    # -- inference

    def _buffer(self, name: str, n: int) -> tuple[np.ndarray, Any]:
        host, dev, cap = self._buffers.get(name, (None, None, 0))
        if n > cap:  # grow only: steady frames never allocate
            dtype = self.tensors[name][1]
            if dev is not None:
                dev.free()
            host = self._cuda.pagelocked_empty(n, dtype)
            dev = self._cuda.mem_alloc(max(1, n * dtype.itemsize))
            self._buffers[name] = (host, dev, n)
        return host[:n], dev

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or batch.shape[0] != 1 or batch.shape[1] != 3:
            raise BackendError(f"input shape {tuple(batch.shape)}: this engine takes [1, 3, H, W] (one frame at a time)")
        _, _, h, w = batch.shape
        (lh, lw), (hh, hw) = self.profile_range
        if not (lh <= h <= hh and lw <= w <= hw):
            raise BackendError(f"input {h}x{w} is outside the engine's profile {lh}x{lw}..{hh}x{hw}; "
                               "rebuild with backend.options.profile")
        cuda, ctx, inp, out = self._cuda, self.context, self.card.input_name, self.card.output_name
        with _PrimaryContext(self._ctx):
            if not ctx.set_input_shape(inp, tuple(batch.shape)):
                raise BackendError(f"TensorRT refused input shape {tuple(batch.shape)} (profile {lh}x{lw}..{hh}x{hw})")
            shapes = {inp: tuple(batch.shape)}
            for name, (is_input, _) in self.tensors.items():
                if not is_input:
                    shape = tuple(ctx.get_tensor_shape(name))
                    if any(d < 0 for d in shape):
                        raise BackendError(f"TensorRT left output {name!r} shape {shape} unresolved for input "
                                           f"{tuple(batch.shape)}")
                    shapes[name] = shape
            bufs = {name: self._buffer(name, int(np.prod(shape))) for name, shape in shapes.items()}
            h_in, d_in = bufs[inp]
            np.copyto(h_in, batch.reshape(-1), casting="unsafe")  # into the engine's input dtype
            cuda.memcpy_htod_async(d_in, h_in, self.stream)
            for name, (_, dev) in bufs.items():  # TensorRT 10 wants an address for every I/O tensor
                if ctx.set_tensor_address(name, int(dev)) is False:
                    raise BackendError(f"TensorRT refused the device address of tensor {name!r}")
            if not ctx.execute_async_v3(self.stream.handle):
                raise BackendError("TensorRT execute_async_v3 failed (see its log above)")
            h_out, d_out = bufs[out]
            cuda.memcpy_dtoh_async(h_out, d_out, self.stream)
            self.stream.synchronize()
            # A copy in float32: the host buffer is reused by the next frame, and fp16 outputs widen.
            return h_out.reshape(shapes[out]).astype(np.float32, copy=True)

    def close(self) -> None:
        if getattr(self, "_ctx", None) is None:
            return
        try:
            with _PrimaryContext(self._ctx):
                for _, dev, _ in getattr(self, "_buffers", {}).values():
                    if dev is not None:
                        dev.free()
                self._buffers = {}
                # Context before engine before runtime, all before the CUDA context goes.
                self.context = None
                self.engine = None
                self._runtime = None
                self.stream = None
        finally:
            self._ctx.detach()
            self._ctx = None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "version": getattr(self, "trt_version", None),
                "gpu": getattr(self, "gpu_name", None), "compute_capability": getattr(self, "compute_capability", None),
                "precision": getattr(self, "precision", None)}
