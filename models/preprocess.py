"""The frame the network sees, and its output back at the frame's size: one home for every consumer.

The daemon (``edge.processing``), validation, eval and threshold picking, the soft labels, the INT8
guard and calibration, and the training crops all feed the network through this module, so a
threshold picked by ``crack-train eval`` is the one the vehicle runs.  What it does is driven by an
input spec: a model card or a registry entry's defaults (``channel_order``, ``mean``, ``std``,
``size_multiple``).

Two ways to size a frame: ``(H, W)`` resizes it (INTER_AREA when shrinking keeps thin cracks,
INTER_LINEAR when enlarging), and ``"native"`` keeps the frame's own size, padded on the right and
bottom to ``size_multiple``.  The padding is zero *after* normalisation (the mean colour): the daemon
zeroes its buffer once per size, and the released figures were measured that way.  numpy + cv2 only.
"""
from __future__ import annotations

import logging
from typing import Callable, Protocol, Sequence, Union

import cv2
import numpy as np

log = logging.getLogger(__name__)

Size = Union[tuple[int, int], str]  # (H, W) to resize to, or "native"


class InputSpec(Protocol):
    """What feeding the network needs: a :class:`models.card.ModelCard` or a registry entry's defaults."""

    channel_order: str
    mean: Sequence[float]
    std: Sequence[float]
    size_multiple: int


def padded(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def padded_size(h: int, w: int, multiple: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of ``multiple``: what 'native' feeds the network."""
    return padded(h, multiple), padded(w, multiple)


def check_size(size: Size, multiple: int) -> Size:
    """``size`` itself, or ValueError when a resize target is not a multiple of ``multiple``."""
    if size == "native":
        return size
    h, w = size  # type: ignore[misc]
    if h % multiple or w % multiple or h <= 0 or w <= 0:
        raise ValueError(f"input size {h}x{w} is not a positive multiple of {multiple}")
    return (int(h), int(w))


# A 1920x1080 camera at its own size costs about 10x a 448x448 frame.  The released students were
# trained on crops of photos 133-480 px long, rescaled 0.6-1.6x: cracks a few px wide.  Halving a
# 1920-wide frame keeps a 2 px crack at about 1 px (still found: the 2 px tolerance holds it) and
# costs a quarter of the native frame, 2.6x a 448x448 one.  A card can say otherwise.
DEFAULT_NATIVE_MAX_SIDE = 960


def native_max_side(card: object, configured: int | None = None, bound: int | None = None) -> tuple[int, str]:
    """(longest side a 'native' frame runs at, where that came from): the one rule for every consumer.

    ``configured`` is the operator's own ``model.max_side`` (None when not set): it wins.  Otherwise
    the card's ``native_max_side``, else :data:`DEFAULT_NATIVE_MAX_SIDE`; never above ``bound`` (the
    config's safety bound, default 1920; None: no bound).
    """
    if configured is not None:
        return int(configured), "config model.max_side"
    side = getattr(card, "native_max_side", None)
    source = "card native_max_side" if side else f"default {DEFAULT_NATIVE_MAX_SIDE}"
    side = int(side or DEFAULT_NATIVE_MAX_SIDE)
    if bound is not None and side > bound:
        return int(bound), f"{source} capped by model.max_side"
    return side, source


def _as_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


class Preprocessor:
    """BGR uint8 frame -> float32 [1,3,Hp,Wp] normalised as the spec says (one buffer per size).

    Not thread-safe: each inference thread takes its own :meth:`clone`.  The tensor is reused by
    the next call; copy it to keep it.  A native frame whose longest side exceeds ``max_side`` is
    first scaled down to it (counted in :attr:`downscaled`, logged once), so no photo or camera mode
    can exhaust memory.
    """

    def __init__(self, spec: InputSpec, size: Size, max_side: int | None = None) -> None:
        self.card = spec  # the daemon's name for it
        self.size = check_size(size, spec.size_multiple)
        self.max_side = max_side
        self.downscaled = 0
        self.swap_rb = spec.channel_order == "RGB"
        std = np.asarray(spec.std, np.float32)
        self.scale = (1.0 / std).reshape(3, 1, 1)
        self.offset = (-np.asarray(spec.mean, np.float32) / std).reshape(3, 1, 1)
        self._tensor: np.ndarray | None = None
        self._resized: np.ndarray | None = None

    def clone(self) -> "Preprocessor":
        """Same spec and size, buffers of its own."""
        return Preprocessor(self.card, self.size, self.max_side)

    def bounded(self, frame: np.ndarray) -> np.ndarray:
        """``frame``, or a copy scaled down so that its longest side is ``max_side``."""
        fh, fw = frame.shape[:2]
        if self.max_side is None or max(fh, fw) <= self.max_side:
            return frame
        scale = self.max_side / max(fh, fw)
        w, h = max(1, round(fw * scale)), max(1, round(fh * scale))
        if not self.downscaled:
            log.warning("event=frame_downscaled from=%dx%d to=%dx%d max_side=%d (model.max_side; counted as "
                        "drops.downscaled, logged once)", fw, fh, w, h, self.max_side)
        self.downscaled += 1
        return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)

    def output_size(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the probability map (and the daemon's mask) for a frame of this size."""
        return tuple(frame_hw) if self.size == "native" else self.size  # type: ignore[return-value]

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (tensor [1,3,Hp,Wp], the BGR image the network saw, at output size)."""
        seen = self._sized(_as_bgr(frame))
        h, w = seen.shape[:2]
        m = self.card.size_multiple
        ph, pw = padded(h, m), padded(w, m)
        if self._tensor is None or self._tensor.shape[2:] != (ph, pw):
            self._tensor = np.zeros((1, 3, ph, pw), np.float32)  # padding stays zero
        src = seen[:, :, ::-1] if self.swap_rb else seen
        view = self._tensor[0, :, :h, :w]
        # uint8 HWC -> float32 CHW in place: (x - mean) / std == x * scale + offset
        np.multiply(src.transpose(2, 0, 1), self.scale, out=view, casting="unsafe")
        view += self.offset
        return self._tensor, seen

    def _sized(self, frame: np.ndarray) -> np.ndarray:
        if self.size == "native":
            return self.bounded(frame)
        h, w = self.size  # type: ignore[misc]
        fh, fw = frame.shape[:2]
        if (fh, fw) == (h, w):
            return frame
        if self._resized is None or self._resized.shape[:2] != (h, w):
            self._resized = np.empty((h, w, 3), np.uint8)
        # INTER_AREA when shrinking keeps thin cracks visible; LINEAR is cheaper when enlarging.
        interp = cv2.INTER_AREA if fh > h or fw > w else cv2.INTER_LINEAR
        return cv2.resize(frame, (w, h), dst=self._resized, interpolation=interp)

    @staticmethod
    def crop(out: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """The network's [N,C,Hp,Wp] output -> [Hp',Wp'] map of image 0, channel 0, padding cut off."""
        h, w = seen.shape[:2]
        return out[0, 0, :h, :w]


def to_frame(prob: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """A probability map at output size -> float32 at the frame's (H, W) (bilinear when resized)."""
    h, w = frame_hw
    prob = np.asarray(prob, np.float32)
    if prob.shape == (h, w):
        return prob
    return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)


def predict_frame(predict: Callable[[np.ndarray], np.ndarray], frame: np.ndarray, spec: InputSpec,
                  size: Size, pre: Preprocessor | None = None) -> np.ndarray:
    """Crack probability (H x W float32) of one frame at the frame's own size.

    ``predict`` maps a normalised float32 [N,3,H,W] batch to [N,1,H,W] probabilities (the ONNX
    contract).  Pass ``pre`` to reuse one Preprocessor's buffers over many frames.
    """
    pre = pre or Preprocessor(spec, size)
    tensor, seen = pre(frame)
    prob = Preprocessor.crop(predict(tensor), seen)
    return to_frame(prob, frame.shape[:2])


def normalise(bgr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """H x W x 3 uint8 BGR -> 3 x H x W float32, channel order and normalisation as the spec says.

    For training crops (already at their size, no padding); equal to what :class:`Preprocessor`
    writes into its tensor.
    """
    x = bgr[:, :, ::-1] if spec.channel_order == "RGB" else bgr
    std = np.asarray(spec.std, np.float32)
    scale = (1.0 / std).reshape(3, 1, 1)
    offset = (-np.asarray(spec.mean, np.float32) / std).reshape(3, 1, 1)
    out = np.multiply(x.transpose(2, 0, 1), scale, dtype=np.float32)
    out += offset
    return out
