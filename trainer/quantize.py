"""Post-training static INT8 of an exported student, guarded by its validation F1(2px).

One QDQ ONNX file comes out that ONNX Runtime, OpenVINO and TensorRT all read: signed int8
activations and weights, both symmetric (zero point 0, which TensorRT requires), weights per
output channel.  Activation ranges are calibrated on training images only (never validation
or test), pre-processed exactly as the model card says.  Before anything is written, the fp32
and the INT8 model are both evaluated on the validation split with the project's metrics; a
model that loses more than ``max_f1_drop`` of F1(2px) is refused.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common import exits
from models.card import CardError, ModelCard, card_path, graph_sha256, load_card, sha256_file, write_card
from models.preprocess import Preprocessor, padded_size
from trainer.data import Pair, list_pairs, read_image, training_pairs
from trainer.errors import ConfigError, DataError, MissingInput, TrainerError
from trainer.inference import frame_size

log = logging.getLogger(__name__)

# Everything else (InstanceNorm, BatchNorm, the sigmoid gate, softmax, slices) stays float:
# normalisation statistics and the output probability lose most from 8 bits, and every
# runtime fuses a float op between QDQ pairs anyway.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Add", "MaxPool", "Relu")


class AccuracyLoss(TrainerError):
    """The INT8 model loses more validation F1(2px) than allowed; nothing was written."""

    exit_code = exits.FAILURE  # the guard is a check that found a problem (was an undocumented 3)


class QuantizeSettings(BaseModel):
    """Everything `crack-train quantize` needs; flags fill it, it is validated before any work."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="Trained fp32 student ONNX file (its card NAME.json beside it)")
    out: Path = Field(description="Where to write the INT8 QDQ ONNX file (and its card beside it)")
    data: Path = Field(description="Dataset folder: calibration from its train split, the guard on its val split")
    calib_count: int = Field(16, ge=1, description="How many training images calibrate the activation ranges")
    calib_seed: int = Field(0, description="Seed that picks the calibration images among the training ones")
    max_f1_drop: float = Field(0.01, description="Largest allowed validation F1(2px) loss, fp32 minus INT8")
    method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="How calibration turns observed activations into ranges")
    mode: Literal["resize", "native"] = Field(
        "resize", description="How validation frames are fed: resized to the card's input size, or at their own size")
    val_fraction: float | None = Field(
        None, gt=0, lt=1, description="Share of train carved as validation (default: the card's training value, else 0.1)")
    val_seed: int | None = Field(None, description="Seed of that carve (default: the card's training value, else 0)")
    threads: int = Field(0, ge=0, description="ONNX Runtime threads for calibration and evaluation (0 = all cores)")


@dataclass
class QuantizeReport:
    """What the guard measured and what was written."""

    out_path: Path
    f1_fp32: float
    f1_int8: float
    max_f1_drop: float
    threshold: float
    calib_images: list[str]
    val_images: int
    seconds: float
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def f1_drop(self) -> float:
        return self.f1_fp32 - self.f1_int8


def _calibration_reader(images: Sequence[Path], card: ModelCard, mode: str = "resize"):
    from onnxruntime.quantization import CalibrationDataReader

    class CardCalibrationReader(CalibrationDataReader):
        """Feeds calibration frames one at a time, read from disk when asked for (memory stays flat)."""

        def __init__(self) -> None:
            self.pre = Preprocessor(card, frame_size(mode, tuple(card.input_size)))
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            path = next(self._it, None)
            if path is None:
                return None
            return {card.input_name: self.pre(read_image(path))[0].copy()}

        def rewind(self) -> None:
            self._it = iter(images)

    return CardCalibrationReader()


def quantize_qdq(model_path: Path, out_path: Path, calib_images: Sequence[Path], card: ModelCard,
                 method: str = "minmax", mode: str = "resize") -> None:
    """Write the QDQ INT8 file; no accuracy check here (see :func:`quantize`)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="crack-quantize-") as tmp:
        # Folds the exporter's Identity/Constant nodes so biases are initialisers the quantiser sees.
        # Symbolic shape inference is skipped: it cannot follow the dynamic H/W through the model.
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(model_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(out_path), _calibration_reader(calib_images, card, mode),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OPS), calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )


def evaluate_f1(model_path: Path, pairs: Sequence[Pair], threshold: float, mode: str = "resize",
                threads: int = 0) -> float:
    """Validation F1(2px) of an ONNX model (card beside it) at ``threshold``: `crack-train eval`'s scoring."""
    from trainer.evaluate import load_model, score

    model = load_model(model_path, threads=threads or None)
    metrics, _, _ = score(model.predict, pairs, model.spec, mode, model.input_size, thresholds=(threshold,))
    return float(metrics.summary(threshold)["tol2"]["f1"])


def quantize(model_path: str | Path, out_path: str | Path, calib_images: Sequence[str | Path],
             val_data: Sequence[Pair], max_f1_drop: float = 0.01, *, method: str = "minmax",
             mode: str = "resize", threads: int = 0, source: dict[str, Any] | None = None) -> QuantizeReport:
    """Quantise ``model_path`` to INT8 QDQ at ``out_path`` unless it loses more than ``max_f1_drop``.

    ``calib_images`` are training images (the caller picks them; never validation or test);
    ``val_data`` the validation pairs both models are judged on, at the fp32 card's threshold.
    Raises :class:`AccuracyLoss` (nothing written) when F1(2px) falls by more than allowed.
    """
    t0 = time.perf_counter()
    model_path, out_path = Path(model_path), Path(out_path)
    if not model_path.exists():
        raise MissingInput(f"{model_path}: model not found")
    try:
        card = load_card(model_path)
    except CardError as e:
        raise DataError(str(e)) from e
    if card.precision == "int8":
        raise ConfigError(f"{model_path}: already an INT8 model (card precision=int8); quantise the fp32 one")
    calib = [Path(p) for p in calib_images]
    if not calib:
        raise ConfigError("no calibration images given")
    for p in calib:
        if not p.exists():
            raise MissingInput(f"{p}: calibration image not found")
    if not val_data:
        raise ConfigError("no validation pairs given: the accuracy guard needs them")
    if out_path.resolve() == model_path.resolve():
        raise ConfigError(f"{out_path}: the INT8 file must not overwrite its fp32 source")

    with tempfile.TemporaryDirectory(prefix="crack-int8-") as tmp:
        staged = Path(tmp) / out_path.name
        log.info("event=calibrate model=%s images=%d method=%s", model_path, len(calib), method)
        quantize_qdq(model_path, staged, calib, card, method, mode)
        int8_card = card.model_copy(deep=True)
        int8_card.name = out_path.stem
        int8_card.precision = "int8"
        write_card(int8_card, staged)  # sets its sha256; embeds it, replacing the fp32 card the quantiser copied

        threshold = float(card.threshold)
        f1_fp32 = evaluate_f1(model_path, val_data, threshold, mode, threads)
        f1_int8 = evaluate_f1(staged, val_data, threshold, mode, threads)
        drop = f1_fp32 - f1_int8
        log.info("event=guard f1_fp32=%.4f f1_int8=%.4f drop=%.4f max_drop=%.4f images=%d",
                 f1_fp32, f1_int8, drop, max_f1_drop, len(val_data))
        if drop > max_f1_drop:
            raise AccuracyLoss(
                f"{model_path}: INT8 refused: validation F1(2px) fp32={f1_fp32:.4f} int8={f1_int8:.4f} "
                f"(drop {drop:.4f} > allowed {max_f1_drop:.4f}, {len(val_data)} images, threshold {threshold:g}); "
                f"{out_path} not written (--max-f1-drop overrides)")

        int8_card.quantization = {
            "format": "QDQ", "activations": "int8 symmetric per-tensor", "weights": "int8 symmetric per-channel",
            "quantized_ops": list(QUANTIZED_OPS), "calibration_method": method, "calibration_mode": mode,
            "calibration_images": [str(p) for p in calib], "source_model": model_path.name,
            "source_sha256": sha256_file(model_path), "source_graph_sha256": graph_sha256(model_path),
            "guard": {"metric": "tol2 F1 (2-pixel tolerance)", "split": "validation", "images": len(val_data),
                      "threshold": threshold, "mode": mode, "f1_fp32": round(f1_fp32, 6),
                      "f1_int8": round(f1_int8, 6), "drop": round(drop, 6), "max_drop": max_f1_drop,
                      **({"data": source} if source else {})},
        }
        # The fp32 card's test figures were not measured on this file: they move under
        # `quantization`, and `crack-train eval --write-card` adds the INT8 model's own.
        int8_card.quantization["source_metrics"] = card.metrics
        int8_card.validated_sizes = _validated_sizes(val_data, card, mode)
        int8_card.metrics = {"val_f1_tol2_fp32": round(f1_fp32, 6), "val_f1_tol2_int8": round(f1_int8, 6)}
        if "definitions" in card.metrics:
            int8_card.metrics["definitions"] = card.metrics["definitions"]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), out_path)
        write_card(int8_card, out_path)
    log.info("event=written out=%s sha256=%s", out_path, int8_card.sha256[:12])
    return QuantizeReport(out_path, f1_fp32, f1_int8, max_f1_drop, threshold, [str(p) for p in calib],
                          len(val_data), time.perf_counter() - t0, int8_card.model_dump(mode="json"))


def _validated_sizes(pairs: Sequence[Pair], card: ModelCard, mode: str) -> list[tuple[int, int]]:
    """The [H, W] the guard ran the INT8 model at: the card's size, or each frame's padded own size."""
    if mode == "resize":
        return [tuple(card.input_size)]
    sizes = set()
    for p in pairs:
        h, w = read_image(p.image).shape[:2]
        sizes.add(padded_size(h, w, card.size_multiple))
    return sorted(sizes)


def pick_calibration(pairs: Sequence[Pair], count: int, seed: int) -> list[Path]:
    """``count`` training images, the same ones for the same names and seed."""
    ordered = sorted(pairs, key=lambda p: p.name)
    order = np.random.default_rng(seed).permutation(len(ordered))[:count]
    return [ordered[i].image for i in sorted(order.tolist())]


def run(settings: QuantizeSettings) -> QuantizeReport:
    """Resolve the dataset splits as the trainer does, then :func:`quantize`."""
    try:
        card = load_card(settings.model)
    except CardError as e:
        raise (MissingInput if not card_path(settings.model).exists() else DataError)(str(e)) from e
    frac = settings.val_fraction if settings.val_fraction is not None else float(card.training.get("val_fraction", 0.1))
    seed = settings.val_seed if settings.val_seed is not None else int(card.training.get("val_seed", 0))
    train = training_pairs(settings.data, "train", frac, seed)
    val = list_pairs(settings.data, "val", frac, seed)
    held = {p.image.resolve() for p in val}
    train = [p for p in train if p.image.resolve() not in held]
    calib = pick_calibration(train, settings.calib_count, settings.calib_seed)
    source = {"dataset": str(settings.data), "val_fraction": frac, "val_seed": seed}
    return quantize(settings.model, settings.out, calib, val, settings.max_f1_drop, method=settings.method,
                    mode=settings.mode, threads=settings.threads, source=source)


def build_parser() -> argparse.ArgumentParser:
    fields = QuantizeSettings.model_fields
    p = argparse.ArgumentParser(prog="crack-train quantize", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help=fields["model"].description)
    p.add_argument("--out", type=Path, help=fields["out"].description + " (default: MODEL-int8.onnx)")
    p.add_argument("--data", type=Path, required=True, help=fields["data"].description)
    p.add_argument("--calib-count", type=int, default=16, help=fields["calib_count"].description)
    p.add_argument("--calib-seed", type=int, default=0, help=fields["calib_seed"].description)
    p.add_argument("--max-f1-drop", type=float, default=0.01, help=fields["max_f1_drop"].description)
    p.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"],
                   help=fields["method"].description)
    p.add_argument("--mode", default="resize", choices=["resize", "native"], help=fields["mode"].description)
    p.add_argument("--val-fraction", type=float, help=fields["val_fraction"].description)
    p.add_argument("--val-seed", type=int, help=fields["val_seed"].description)
    p.add_argument("--threads", type=int, default=0, help=fields["threads"].description)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`crack-train quantize MODEL.onnx --data DATASET [--out OUT.onnx] [--max-f1-drop 0.01]`."""
    args = build_parser().parse_args(argv)
    if args.out is None:
        args.out = args.model.with_name(f"{args.model.stem}-int8.onnx")
    try:
        settings = QuantizeSettings(**{k: v for k, v in vars(args).items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        print(f"crack-train quantize: {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        return ConfigError.exit_code
    try:
        report = run(settings)
    except TrainerError as e:
        print(f"crack-train quantize: {e}", file=sys.stderr)
        return e.exit_code
    print(f"wrote {report.out_path} (validation F1(2px) fp32={report.f1_fp32:.4f} int8={report.f1_int8:.4f}, "
          f"drop {report.f1_drop:.4f} <= {report.max_f1_drop:.4f}; {len(report.calib_images)} calibration images; "
          f"{report.seconds:.1f} s)")
    return exits.OK


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sys.exit(main())
