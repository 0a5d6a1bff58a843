"""ONNX Runtime: the CPU everywhere, CUDA where the GPU build is installed."""
from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
from pydantic import Field

from edge.backends.base import Backend, BackendError, BackendOptions


class Options(BackendOptions):
    """``backend.options`` for ONNX Runtime (threads and precision are ``backend`` fields)."""

    providers: list[str] | None = Field(None, min_length=1, description=(
        "Execution providers in order of preference (default: CUDA, then CPU); absent ones are skipped"))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec("onnxruntime") is not None

    @classmethod
    def prefers_int8(cls) -> bool:
        # On the CPU the QDQ file is ~1.2x faster; a GPU build keeps the fp32 file (QDQ on CUDA is slower).
        import onnxruntime as ort

        return "CUDAExecutionProvider" not in ort.get_available_providers()

    def load(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        threads = int(self.options.get("threads") or 0)
        if threads:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        wanted = self.options.get("providers") or ["CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in wanted if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(self.model_path), so, providers=providers)
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise BackendError(f"{self.model_path}: ONNX Runtime cannot load it: {e}") from e
        names = [i.name for i in self.session.get_inputs()]
        if self.card.input_name not in names:
            raise BackendError(f"{self.model_path}: input {self.card.input_name!r} not in model inputs {names}")
        self.providers = self.session.get_providers()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.card.output_name], {self.card.input_name: batch})[0]

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"backend": self.name, "version": ort.__version__,
                "providers": getattr(self, "providers", []), "precision": self.card.precision}
