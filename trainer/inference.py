"""Running a model on whole images the way the daemon does, for validation, labels and eval.

Two ways to feed a frame: ``resize`` (to the card's input size, e.g. 448x448, aspect distorted, as
the daemon does by default; the probability map is resized back to the frame's size) and ``native``
(the frame's own size, padded at the bottom and right to the card's size multiple; the padding is cut
off again).  Both are :mod:`models.preprocess`, the daemon's own code.  Predictors take a normalised
float32 [N,3,H,W] batch and return the crack probability [N,1,H,W]: the same contract as the ONNX file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from models.preprocess import InputSpec, Preprocessor, Size, predict_frame

MODES = ("resize", "native")


class Predictor(Protocol):
    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def frame_size(mode: str, size: tuple[int, int]) -> Size:
    """What :mod:`models.preprocess` sizes frames to for an eval ``mode``: ``size`` or "native"."""
    if mode == "resize":
        return tuple(size)  # type: ignore[return-value]
    if mode == "native":
        return "native"
    raise ValueError(f"unknown mode {mode!r}; choose resize or native")


def predict_image(predict: Callable[[np.ndarray], np.ndarray], bgr: np.ndarray, spec: InputSpec,
                  mode: str = "resize", size: tuple[int, int] = (448, 448),
                  pre: Preprocessor | None = None) -> np.ndarray:
    """Crack probability (HxW float32) of one BGR frame, at the frame's own size, as the daemon feeds it."""
    return predict_frame(predict, bgr, spec, frame_size(mode, size), pre)


class TorchPredictor:
    """A PyTorch MCFF-L Net as a predictor: softmax(mix / temperature), crack channel."""

    def __init__(self, net, device: str = "cpu", temperature: float = 1.0) -> None:
        import torch

        from models.mcff import DeployHead

        self.torch = torch
        self.device = device
        self.head = DeployHead(net, temperature).to(device).eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            return self.head(x).float().cpu().numpy()


class OnnxPredictor:
    """An exported ONNX file run through the daemon's own ONNX Runtime backend and its card."""

    def __init__(self, onnx_path: str | Path, threads: int | None = None) -> None:
        from edge.backends.base import create_backend
        from models.card import load_card

        self.card = load_card(onnx_path)
        self.backend = create_backend("onnxruntime", onnx_path, self.card, threads=threads or 0)
        self.backend.load()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.backend.infer(np.ascontiguousarray(batch, dtype=np.float32))
