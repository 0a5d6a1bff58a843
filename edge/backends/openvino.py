"""OpenVINO on the CPU: the fast path on x86 boxes without a GPU (fp32, bf16, QDQ INT8).

It reads the same ONNX file and card as ONNX Runtime.  OpenVINO's CPU plugin is fastest on
static shapes, so the dynamic-H/W model is reshaped to each incoming frame size and one
compiled model is kept per shape; with ``cache_dir`` the compiled blobs go to disk, so a
restart imports them instead of compiling again.

With ``streams`` > 1 the model is compiled for throughput: each stream owns a share of the
cores and its own infer request, and that many ``infer`` calls run at once (the pipeline
gives the backend as many inference threads).  On two cores two single-threaded streams
put 2-3 % more frames through the daemon's pipeline than one two-threaded request (neither
waits at the other's layer barriers, and a core lent to pre/post-processing stalls only one
frame), at twice the time per frame (docs/cpu-inference.md).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from edge.backends.base import Backend, BackendError, BackendOptions

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
# The model's own precision (card) -> what we run it at when the config does not say.
_DEFAULT_FOR_CARD = {"fp32": "fp32", "fp16": "fp32", "int8": "int8"}
# A camera has one size and `bench` a few; more than this is a caller feeding random sizes.
MAX_COMPILED_SHAPES = 8


@functools.lru_cache(maxsize=1)
def shared_core() -> Any:
    """The process's one ``ov.Core``, alive until exit.

    Why not one per backend: each Core's CPU plugin installs an alternate signal stack on the
    thread that creates it and, when freed, restores the one it found. Two Cores freed in the
    order they were made (the old backend dropped after the new one loaded, or ``bench`` going
    through its rows) leave that thread on unmapped memory, and the next SIGTERM kills the
    process with SIGSEGV instead of a clean stop (OpenVINO 2026.4; reproduced by
    test_a_signal_after_backends_are_replaced_is_handled). Per-backend settings such as the
    cache directory go with each compile_model call instead.
    """
    import openvino as ov

    return ov.Core()


def cpu_capabilities(core: Any) -> list[str]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES, e.g. ['FP32', 'BF16', 'INT8', ...]."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def count_fake_quantize(model: Any) -> int:
    """How many quantise points OpenVINO found in the graph (ONNX QDQ pairs become FakeQuantize)."""
    return sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")


def _loaded_from_cache(compiled: Any) -> bool:
    """Whether OpenVINO imported this compiled model from CACHE_DIR instead of compiling it."""
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except RuntimeError:  # a plugin that does not report it
        return False


def auto_streams(cores: int | None = None) -> int:
    """Streams when the config says 0: two on a multi-core CPU (throughput at bounded latency)."""
    cores = cores or os.cpu_count() or 1
    return 2 if cores >= 2 else 1


class Options(BackendOptions):
    """``backend.options`` for OpenVINO (threads, streams, precision and cache_dir are ``backend`` fields)."""

    device: str | None = Field(None, min_length=1, description="OpenVINO device to compile for (default: CPU)")


class OpenVINOBackend(Backend):
    """Options: ``precision`` (fp32 | bf16 | int8), ``threads``, ``streams`` (0 = auto), ``cache_dir``,
    ``device`` (CPU)."""

    name = "openvino"

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec("openvino") is not None

    @classmethod
    def prefers_int8(cls) -> bool:
        return True  # the CPU plugin: VNNI/AMX int8 kernels, ~3x fp32 on a student (docs/cpu-inference.md)

    @classmethod
    def precisions_here(cls) -> list[str]:
        """The precisions this CPU runs natively (int8 needs a QDQ model as well)."""
        caps = cpu_capabilities(shared_core())
        return [p for p in PRECISIONS if p == "fp32" or p.upper() in caps]

    def load(self) -> None:
        import openvino as ov

        self._ov = ov
        self.core = shared_core()
        self.device = str(self.options.get("device") or "CPU")
        self.threads = int(self.options.get("threads") or 0)
        self.streams = int(self.options.get("streams") or 0) or auto_streams()
        if self.threads:
            self.streams = max(1, min(self.streams, self.threads))  # a stream needs a thread of its own
        self.parallel = self.streams
        self._lock = threading.Lock()
        self._first_lock = threading.Lock()
        self._first_done = False
        self.cache_dir = self.options.get("cache_dir")
        self.cache_error = ""
        if self.cache_dir:
            try:
                Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                # A read-only cache costs start-up time, not frames: run on, and say so.
                self.cache_error = f"cache_dir {self.cache_dir}: {e.strerror}"
                log.warning("event=cache_disabled backend=openvino reason=%r", self.cache_error)
                self.cache_dir = None
        try:
            self.model = self.core.read_model(str(self.model_path))
        except RuntimeError as e:
            raise BackendError(f"{self.model_path}: OpenVINO cannot read it: {e}") from e
        names = [n for p in self.model.inputs for n in p.get_names()]
        if self.card.input_name not in names:
            raise BackendError(f"{self.model_path}: input {self.card.input_name!r} not in model inputs {names}")
        out_names = [n for p in self.model.outputs for n in p.get_names()]
        if self.card.output_name not in out_names:
            raise BackendError(f"{self.model_path}: output {self.card.output_name!r} not in model outputs {out_names}")
        self.quantize_points = count_fake_quantize(self.model)
        self.precision, self.fallback_reason = self._choose_precision()
        self._compiled: OrderedDict[tuple[int, ...], tuple[Any, queue.SimpleQueue]] = OrderedDict()
        self.compile_ms: dict[str, float] = {}
        self.from_cache: dict[str, bool] = {}
        # Compile the size frames will come at now, so the first frame is not the one that pays for
        # it: the caller's ``warm_size`` (None: unknown until a frame comes, as for 'native'), else the card's.
        warm = self.options.get("warm_size", tuple(self.card.input_size))
        if warm:
            self._requests((1, 3, int(warm[0]), int(warm[1])))

    def _choose_precision(self) -> tuple[str, str]:
        """The precision to run at, and why it differs from the one asked for ('' when it does not)."""
        card_precision = _DEFAULT_FOR_CARD.get(self.card.precision, "fp32")
        wanted = str(self.options.get("precision") or card_precision).lower()
        if wanted not in PRECISIONS:
            raise BackendError(f"precision {wanted!r} is not one of {', '.join(PRECISIONS)} for backend openvino")
        if wanted == "int8" and not self.quantize_points:
            raise BackendError(
                f"{self.model_path}: precision int8 needs a QDQ INT8 model (make one with `crack-train quantize`); "
                f"this file has no QuantizeLinear/DequantizeLinear pairs (card precision={self.card.precision})")
        if wanted == "bf16":
            caps = cpu_capabilities(self.core)
            if "BF16" not in caps:
                reason = f"this CPU has no BF16 (OPTIMIZATION_CAPABILITIES={','.join(caps)}); running fp32"
                log.warning("event=precision_fallback backend=openvino requested=bf16 used=fp32 reason=%r", reason)
                return "fp32", reason
        if wanted != "int8" and self.quantize_points:
            log.info("event=qdq_model backend=openvino precision=%s note=%r", wanted,
                     "the file is QDQ INT8: its quantised layers run in int8 whatever the precision")
        return wanted, ""

    def _compile_config(self) -> dict[str, Any]:
        # fp32 must be asked for: on CPUs with BF16 OpenVINO silently runs bf16 by default.
        # For int8 the QDQ pairs decide what runs in int8; the rest stays fp32 for accuracy.
        hint = "bf16" if self.precision == "bf16" else "f32"
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint}
        if self.streams > 1:
            config.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=str(self.streams))
        else:
            config["PERFORMANCE_HINT"] = "LATENCY"
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self.cache_dir:  # per compile, not core-wide: the Core is shared by every backend
            config["CACHE_DIR"] = str(self.cache_dir)
        return config

    def _requests(self, shape: tuple[int, ...]) -> queue.SimpleQueue:
        """The pool of infer requests compiled for this exact input shape (compiled on first use)."""
        with self._lock:  # two inference threads meeting a new size must compile it once
            hit = self._compiled.get(shape)
            if hit is not None:
                self._compiled.move_to_end(shape)
                return hit[1]
            compiled = self._compile(shape)
            pool: queue.SimpleQueue = queue.SimpleQueue()
            for _ in range(self.streams):
                pool.put(compiled.create_infer_request())
            self._compiled[shape] = (compiled, pool)
            if len(self._compiled) > MAX_COMPILED_SHAPES:
                old, _ = self._compiled.popitem(last=False)
                log.info("event=evicted backend=openvino shape=%s", "x".join(map(str, old)))
            return pool

    def _compile(self, shape: tuple[int, ...]) -> Any:
        model = self.model.clone()
        try:
            model.reshape({self.card.input_name: list(shape)})
        except RuntimeError as e:
            raise BackendError(f"{self.model_path}: cannot reshape input to {list(shape)}: {e}") from e
        t0 = time.perf_counter()
        try:
            compiled = self.core.compile_model(model, self.device, self._compile_config())
        except RuntimeError as e:
            raise BackendError(f"{self.model_path}: OpenVINO cannot compile it for {self.device}: {e}") from e
        ms = (time.perf_counter() - t0) * 1000.0
        key = "x".join(map(str, shape))
        self.compile_ms[key] = round(ms, 1)
        self.from_cache[key] = bool(self.cache_dir) and _loaded_from_cache(compiled)
        log.info("event=compiled backend=openvino shape=%s precision=%s streams=%d ms=%.1f cache_dir=%s from_cache=%s",
                 key, self.precision, self.streams, ms, self.cache_dir or "-", self.from_cache[key])
        return compiled

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Thread-safe: each concurrent call borrows one of the shape's ``streams`` requests."""
        if not self._first_done:
            # pybind11 sets up its NumPy bridge once per process, on the first array handed over; two
            # threads arriving there together can deadlock (seen: both inference threads stuck for
            # good in OpenVINO's data dispatcher). The first call goes alone.
            with self._first_lock:
                out = self._infer(batch)
                self._first_done = True
                return out
        return self._infer(batch)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        pool = self._requests(tuple(int(d) for d in batch.shape))
        request = pool.get()  # more callers than streams wait here for a free one
        try:
            # share_inputs: the request reads the caller's array in place (it stays alive for this sync call).
            request.infer({self.card.input_name: batch}, share_inputs=True)
            # The output tensor is the request's own buffer, rewritten by the next call: hand back a copy.
            return np.array(request.get_tensor(self.card.output_name).data, copy=True)
        finally:
            pool.put(request)

    def close(self) -> None:
        self._compiled = OrderedDict()
        self.model = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": self.name, "precision": getattr(self, "precision", None),
                                "model_precision": self.card.precision}
        if hasattr(self, "_ov"):
            info.update(version=self._ov.__version__, device=self.device, threads=self.threads or "auto",
                        streams=self.streams,
                        cache_dir=str(self.cache_dir) if self.cache_dir else None,
                        quantize_points=self.quantize_points, compile_ms=dict(self.compile_ms),
                        from_cache=dict(self.from_cache))
            if self.fallback_reason:
                info["fallback_reason"] = self.fallback_reason
            if self.cache_error:
                info["cache_error"] = self.cache_error
        return info
