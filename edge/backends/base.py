"""The contract every inference runtime implements, and the table that picks one.

Each runtime lives in its own module and imports its runtime inside ``load()``, so
``import edge`` stays light and a machine without TensorRT still runs everything else.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from models.card import ModelCard

# name -> "module:Class"; `auto` tries them in this order (fastest first).
BACKENDS: dict[str, str] = {
    "tensorrt": "edge.backends.tensorrt:TensorRTBackend",
    "openvino": "edge.backends.openvino:OpenVINOBackend",
    "onnxruntime": "edge.backends.onnxruntime:OnnxRuntimeBackend",
}
AUTO_ORDER = ("tensorrt", "openvino", "onnxruntime")


class BackendError(RuntimeError):
    """A runtime that cannot serve this model here (missing, wrong GPU, bad engine...)."""


class BackendUnavailable(BackendError):
    """The runtime is not installed on this machine."""


class Backend(ABC):
    """Runs one model: float32 [N,3,H,W] normalised input -> float32 [N,1,H,W] crack probability."""

    name: str = "base"
    # How many infer() calls may usefully run at once (the pipeline starts that many inference
    # threads); a runtime that sets it above 1 must make infer() thread-safe.
    parallel: int = 1

    def __init__(self, model_path: str | Path, card: ModelCard, **options: Any) -> None:
        self.model_path = Path(model_path)
        self.card = card
        self.options = options

    @classmethod
    def available(cls) -> bool:
        """True when the runtime can be imported here (cheap: no model is loaded)."""
        return True

    @classmethod
    def prefers_int8(cls) -> bool:
        """Whether this runtime, here, runs a model's guarded INT8 sibling faster than the fp32 file.

        When the config names no precision, the daemon then loads ``NAME-int8.onnx`` instead of
        ``NAME.onnx`` (see :func:`models.card.quantized_variant`).
        """
        return False

    @abstractmethod
    def load(self) -> None:
        """Import the runtime and prepare the model once (sessions, buffers, compiled graphs)."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """One forward pass; ``batch`` is contiguous float32 [N,3,H,W], H and W multiples of 4."""

    def close(self) -> None:
        """Release the runtime's resources; safe to call twice."""

    def describe(self) -> dict[str, Any]:
        """What the status heartbeat and `crack-edge check` report about this backend."""
        return {"backend": self.name}


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise BackendUnavailable(f"backend {name!r} cannot be imported: {e}") from e


def options_model(name: str) -> type[BaseModel]:
    """The ``Options`` model of backend ``name`` (the keys ``backend.options`` may hold for it).

    It lives in the backend's own module, beside the code that reads it; importing that module
    does not import the runtime.
    """
    module = BACKENDS[name].split(":")[0]
    return getattr(importlib.import_module(module), "Options")


class BackendOptions(BaseModel):
    """Base of each backend's ``Options``: unknown keys are refused, naming the key."""

    model_config = ConfigDict(extra="forbid")


def available_backends() -> list[str]:
    out = []
    for name in AUTO_ORDER:
        try:
            if backend_class(name).available():
                out.append(name)
        except BackendError:
            continue
    return out


def resolve_name(name: str) -> str:
    """``auto`` -> the first available of AUTO_ORDER (BackendUnavailable when none); others unchanged."""
    if name != "auto":
        return name
    present = available_backends()
    if not present:
        raise BackendUnavailable("no inference runtime is installed (pip install 'crack-inspect[edge]')")
    return present[0]


def create_backend(name: str, model_path: str | Path, card: ModelCard, **options: Any) -> Backend:
    """Build (not yet load) the named backend; ``auto`` takes the first available of AUTO_ORDER."""
    name = resolve_name(name)
    cls = backend_class(name)
    if not cls.available():
        raise BackendUnavailable(f"backend {name!r} is not installed on this machine")
    return cls(model_path, card, **options)
