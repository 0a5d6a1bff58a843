"""The model card: the JSON file beside every released ``NAME.onnx``.

It is the contract between whoever trains a model and whatever runs it (the daemon's
backends, the evaluator, the viewer's captions): sizes, normalisation, threshold and the
figures measured on it.  Plain pydantic, no torch.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class CardError(ValueError):
    """A card that is missing, unreadable or does not match its model file."""


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Short model name, e.g. mcff-student")
    arch: str = Field("student", description="Registered variant the weights belong to")
    input_name: str = Field("image", description="ONNX input tensor name")
    output_name: str = Field("crack_prob", description="ONNX output tensor name")
    input_size: tuple[int, int] = Field((448, 448), description="[H, W] the model expects by default")
    channel_order: Literal["BGR", "RGB"] = "BGR"
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Probability above which a pixel is crack")
    size_multiple: int = Field(4, ge=1, le=1024, description="H and W must be multiples of this")
    inference: Literal["resize", "native"] = Field(
        "resize", description="How a consumer sizes frames by default: 'resize' to input_size, or 'native': "
        "the frame's own size padded to size_multiple (the figures say which one they were measured at)")
    precision: str = Field("fp32", description="fp32, fp16 or int8 (QDQ)")
    params: int = Field(0, description="Trainable parameters")
    gflops: float = Field(0.0, description="2 x multiply-adds per input_size frame, in 1e9")
    sha256: str = Field("", description="SHA-256 of the ONNX file this card describes")
    validated_sizes: list[tuple[int, int]] = Field(default_factory=list)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        # Frames are divided by std: zero (or negative) would fill the input with inf/NaN.
        if not all(s > 0 for s in v):
            raise ValueError(f"each value must be > 0 (frames are divided by it), got {list(v)}")
        return v

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not all(n >= 1 for n in v):
            raise ValueError(f"[H, W] must be positive, got {list(v)}")
        return v


def card_path(onnx_path: str | Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_card(onnx_path: str | Path, verify: bool = True) -> ModelCard:
    """Read ``NAME.json`` beside ``NAME.onnx``; with ``verify``, refuse a card for another file."""
    path = card_path(onnx_path)
    try:
        card = ModelCard.model_validate(json.loads(path.read_text()))
    except FileNotFoundError as e:
        raise CardError(f"{path}: model card not found beside {onnx_path}") from e
    except (json.JSONDecodeError, ValidationError) as e:
        raise CardError(f"{path}: invalid model card: {e}") from e
    if verify and card.sha256 and Path(onnx_path).exists():
        actual = sha256_file(onnx_path)
        if actual != card.sha256:
            raise CardError(f"{path}: sha256 {card.sha256[:12]}… does not match {onnx_path} ({actual[:12]}…)")
    return card


def write_card(card: ModelCard, onnx_path: str | Path) -> Path:
    path = card_path(onnx_path)
    path.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    return path


def int8_sibling(onnx_path: str | Path) -> Path | None:
    """``NAME-int8.onnx`` beside ``NAME.onnx`` (what `crack-train quantize` writes), if it is there."""
    model = Path(onnx_path)
    if model.stem.endswith("-int8"):
        return model
    path = model.with_name(f"{model.stem}-int8.onnx")
    return path if path.is_file() else None


def quantized_variant(onnx_path: str | Path, card: ModelCard, verify: bool = True) -> tuple[Path, ModelCard]:
    """The guarded INT8 sibling of an fp32 model and its card, or CardError saying why it cannot serve.

    It must be the quantisation of *this* file: its card's ``quantization.source_sha256`` names
    the fp32 file's sha256, so an INT8 file left beside a retrained model is never picked up.
    """
    path = int8_sibling(onnx_path)
    if path is None:
        raise CardError(f"{onnx_path}: no {Path(onnx_path).stem}-int8.onnx beside it (make one with `crack-train quantize`)")
    qcard = load_card(path, verify=verify)
    if qcard.precision != "int8":
        raise CardError(f"{card_path(path)}: precision is {qcard.precision!r}, not int8")
    source = (getattr(qcard, "quantization", None) or {}).get("source_sha256", "")
    own = card.sha256 or sha256_file(onnx_path)
    if source != own:
        raise CardError(f"{card_path(path)}: quantised from {source[:12] or 'an unnamed model'}…, "
                        f"not from {Path(onnx_path).name} ({own[:12]}…)")
    return path, qcard
