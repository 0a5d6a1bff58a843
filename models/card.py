"""The model card: written whole into every ``NAME.onnx``'s metadata, and beside it as ``NAME.json``.

It is the contract between whoever trains a model and whatever runs it (the daemon's
backends, the evaluator, the viewer's captions): sizes, normalisation, threshold and the
figures measured on it.  Plain pydantic, no torch, no ``onnx``.

One card, two copies.  :func:`write_card` embeds the card in the ONNX file's metadata under
:data:`METADATA_KEY` (without ``sha256``: a file cannot hold its own hash), then writes the side
file ``NAME.json`` for people, whose ``sha256`` is that of the ONNX file's bytes as written.
:func:`load_card` reads the side file when it is there (its sha256 checked against the file)
and holds it to the embedded card: two copies that disagree (a hand edit, a tool that wrote only
one) are refused with the fields that differ, since nothing says which one was validated.
Without a side file the embedded card is used, its ``sha256`` computed from the file.  The
model's identity apart from its card is :func:`graph_sha256`, which a card rewrite leaves alone.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.onnx_metadata import MetadataError, read_metadata, write_metadata
from models.onnx_metadata import graph_sha256 as _graph_sha256
from models.registry import DEFAULT_VARIANT, list_models, variant_defaults

METADATA_KEY = "crack_inspect.card"
# Single facts the exporter wrote before the card went in whole: removed on the next write.
LEGACY_METADATA_KEYS = ("input_size", "channel_order", "mean", "std", "threshold", "arch")


class CardError(ValueError):
    """A card that is missing, unreadable or does not match its model file."""


class ModelCard(BaseModel):
    """Fields a card leaves out take its variant's defaults (``models.registry``)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Short model name, e.g. mcff-student")
    arch: str = Field(DEFAULT_VARIANT, description="Registered variant the weights belong to")
    input_name: str = Field("image", description="ONNX input tensor name")
    output_name: str = Field("crack_prob", description="ONNX output tensor name")
    input_size: tuple[int, int] = Field(description="[H, W] the model expects by default")
    channel_order: Literal["BGR", "RGB"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    threshold: float = Field(ge=0.0, le=1.0, description="Probability above which a pixel is crack")
    size_multiple: int = Field(ge=1, le=1024, description="H and W must be multiples of this")
    inference: Literal["resize", "native"] = Field(
        "resize", description="How a consumer sizes frames by default: 'resize' to input_size, or 'native': "
        "the frame's own size padded to size_multiple (the figures say which one they were measured at)")
    precision: str = Field("fp32", description="fp32, fp16 or int8 (QDQ)")
    params: int = Field(0, description="Trainable parameters")
    gflops: float = Field(0.0, description="2 x multiply-adds per input_size frame, in 1e9")
    sha256: str = Field("", description="SHA-256 of the ONNX file this card describes")
    validated_sizes: list[tuple[int, int]] = Field(default_factory=list)
    train_scale: dict[str, Any] = Field(default_factory=dict, description=(
        "The pixel scale the weights were trained at: crop_px (training crop side), scale (random rescale "
        "range of the training images before cropping), max_aspect; filled from training.recipe when absent"))
    native_max_side: int | None = Field(None, ge=64, le=8192, description=(
        "Longest side, px, a frame is scaled down to before 'native' inference (models.preprocess."
        "native_max_side: the rule; None: its default, 960)"))
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _variant_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            arch = data.get("arch", DEFAULT_VARIANT)
            if arch in list_models():  # an unknown variant must say everything itself
                data = {**variant_defaults(arch).card_values(), **data}
        return data

    @model_validator(mode="after")
    def _train_scale_from_recipe(self) -> "ModelCard":
        recipe = self.training.get("recipe") if isinstance(self.training, dict) else None
        if not self.train_scale and isinstance(recipe, dict) and "crop" in recipe:
            self.train_scale = {"crop_px": recipe["crop"],
                                "scale": [recipe.get("scale_min", 1.0), recipe.get("scale_max", 1.0)],
                                "max_aspect": recipe.get("max_aspect", 1.0)}
        return self

    def embedded(self) -> dict[str, Any]:
        """What goes into the ONNX metadata: the whole card but its own file's sha256."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k != "sha256"}

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


def graph_sha256(onnx_path: str | Path) -> str:
    """SHA-256 of the ONNX file without its metadata: the same before and after a card rewrite."""
    try:
        return _graph_sha256(onnx_path)
    except (OSError, MetadataError) as e:
        raise CardError(f"{onnx_path}: cannot read it as ONNX: {e}") from e


def embedded_card(onnx_path: str | Path) -> ModelCard | None:
    """The card in the ONNX file's metadata (``sha256`` left empty), or None when it has none."""
    try:
        text = read_metadata(onnx_path).get(METADATA_KEY)
    except (OSError, MetadataError) as e:
        raise CardError(f"{onnx_path}: cannot read its metadata: {e}") from e
    if text is None:
        return None
    try:
        return ModelCard.model_validate({**json.loads(text), "sha256": ""})
    except (json.JSONDecodeError, ValidationError) as e:
        raise CardError(f"{onnx_path}: invalid model card in its metadata ({METADATA_KEY}): {e}") from e


def _side_card(path: Path) -> ModelCard | None:
    try:
        return ModelCard.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as e:
        raise CardError(f"{path}: invalid model card: {e}") from e


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def load_card(onnx_path: str | Path, verify: bool = True) -> ModelCard:
    """The card of ``NAME.onnx``: its side file ``NAME.json``, else the one embedded in it.

    With ``verify``, a side card's sha256 must be the file's.  A side card and an embedded card
    that disagree are refused (CardError naming the fields), ``verify`` or not.
    """
    onnx_path = Path(onnx_path)
    path = card_path(onnx_path)
    side = _side_card(path)
    embedded = embedded_card(onnx_path) if onnx_path.is_file() else None
    if side is None and embedded is None:
        raise CardError(f"{path}: model card not found beside {onnx_path}, and none in its metadata")
    if side is None:
        embedded.sha256 = sha256_file(onnx_path)  # the file describes itself: nothing to hold it to
        return embedded
    if verify and side.sha256 and onnx_path.exists():
        actual = sha256_file(onnx_path)
        if actual != side.sha256:
            raise CardError(f"{path}: sha256 {side.sha256[:12]}… does not match {onnx_path} ({actual[:12]}…)")
    if embedded is not None:
        differ = _differences(side.embedded(), embedded.embedded())
        if differ:
            raise CardError(f"{path}: differs from the card in {onnx_path.name}'s metadata in {', '.join(differ)}; "
                            f"rewrite both with the command that changed it (e.g. crack-train eval --write-card), "
                            f"or remove {path.name} to run on the embedded card")
    return side


def write_card(card: ModelCard, onnx_path: str | Path) -> Path:
    """Embed ``card`` in the ONNX file (when there is one), then write the side file; returns its path.

    Sets ``card.sha256`` to the sha256 of the ONNX file as now written.  The two files are each
    replaced atomically, the ONNX file first.
    """
    onnx_path = Path(onnx_path)
    if onnx_path.is_file():
        updates: dict[str, str | None] = {k: None for k in LEGACY_METADATA_KEYS}
        updates[METADATA_KEY] = json.dumps(card.embedded(), separators=(",", ":"))
        try:
            write_metadata(onnx_path, updates)
        except MetadataError as e:
            raise CardError(f"{onnx_path}: cannot write the card into it: {e}") from e
        card.sha256 = sha256_file(onnx_path)
    path = card_path(onnx_path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp, path)
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

    It must be the quantisation of *this* model: its card's ``quantization.source_graph_sha256``
    names the fp32 file's :func:`graph_sha256` (which a rewrite of the fp32 card leaves alone), or,
    on cards written before it, ``source_sha256`` the fp32 file's sha256; so an INT8 file left
    beside a retrained model is never picked up.
    """
    path = int8_sibling(onnx_path)
    if path is None:
        raise CardError(f"{onnx_path}: no {Path(onnx_path).stem}-int8.onnx beside it (make one with `crack-train quantize`)")
    qcard = load_card(path, verify=verify)
    if qcard.precision != "int8":
        raise CardError(f"{card_path(path)}: precision is {qcard.precision!r}, not int8")
    quant = getattr(qcard, "quantization", None) or {}
    if quant.get("source_graph_sha256"):
        source, own = quant["source_graph_sha256"], graph_sha256(onnx_path)
    else:
        source, own = quant.get("source_sha256", ""), card.sha256 or sha256_file(onnx_path)
    if source != own:
        raise CardError(f"{card_path(path)}: quantised from {source[:12] or 'an unnamed model'}…, "
                        f"not from {Path(onnx_path).name} ({own[:12]}…)")
    return path, qcard
