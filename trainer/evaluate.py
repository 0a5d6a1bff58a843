"""``crack-train eval``: judge a checkpoint or an ONNX file on one split, as the daemon runs it.

Each image is predicted whole, through the daemon's own pre-processing (:mod:`models.preprocess`:
``resize`` to the model's input size and back, or ``native`` size padded to the card's size
multiple), with the card's (or, for a checkpoint, its variant's) channel order and normalisation, and every metric of :mod:`trainer.metrics` is accumulated at the
original size against the raw ground truth.  Writes ``report.json``, overlays of the worst images
(green: found crack, red: false alarm, blue: missed crack) and ``figure.png`` (photo | ground truth |
prediction for a few images spread from worst to best).

The threshold comes from, in order: ``--threshold``; ``--pick-threshold`` (only on a validation
split: the threshold with the best F1(2px) over a grid); the model card (ONNX) or the threshold the
training run picked on validation (checkpoint).  Test data never chooses a threshold.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from models.preprocess import InputSpec, Preprocessor, native_max_side, padded_size, predict_frame
from trainer.data import VAL_ALIASES, Pair, list_pairs, read_pair
from trainer.errors import ConfigError, MissingInput
from trainer.inference import OnnxPredictor, TorchPredictor
from trainer.inference import frame_size as frame_size_for
from trainer.metrics import DEFAULT_THRESHOLDS, MetricSet, mean_over_sets
from trainer.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    predict: Any
    kind: str
    input_size: tuple[int, int]
    threshold: float
    threshold_source: str
    sha256: str
    spec: InputSpec  # channel order, normalisation and size multiple: the card's or the variant's


def _identity(path: str | Path, m: LoadedModel) -> str:
    from models.card import graph_sha256

    return graph_sha256(path) if m.kind == "onnx" else m.sha256


def load_model(path: str | Path, device: str = "cpu", threads: int | None = None) -> LoadedModel:
    """A predictor for an ``.onnx`` file (through the daemon's ONNX Runtime backend) or a checkpoint."""
    from models.card import sha256_file

    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path}: model not found")
    if path.suffix == ".onnx":
        p = OnnxPredictor(path, threads)
        return LoadedModel(p, "onnx", tuple(p.card.input_size), p.card.threshold, "card", sha256_file(path), p.card)
    from models import variant_defaults
    from trainer.labels import load_checkpoint

    if threads:
        import torch

        torch.set_num_threads(threads)
    net, meta = load_checkpoint(path, device)
    defaults = variant_defaults(meta["arch"])
    thr = float(meta.get("val", {}).get("val_threshold", defaults.threshold))
    return LoadedModel(TorchPredictor(net, device, meta.get("deploy_temperature", 1.0)), "checkpoint",
                       tuple(defaults.input_size), thr, "training validation", sha256_file(path), defaults)


def score(predict, pairs: Sequence[Pair], spec: InputSpec, mode: str, size: tuple[int, int],
          thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> tuple[MetricSet, dict[str, np.ndarray], float]:
    """Accumulate metrics over ``pairs``; returns (metrics, probability maps by name, ms per image)."""
    ms = MetricSet(thresholds=thresholds)
    # 'native' frames above the card's rule are scaled down first, exactly as the daemon does.
    pre = Preprocessor(spec, frame_size_for(mode, size), max_side=native_max_side(spec)[0])
    probs: dict[str, np.ndarray] = {}
    elapsed = 0.0
    bar = Progress(len(pairs), "eval", unit="images")  # Crack500's 400 crops take a minute on a CPU
    for i, pair in enumerate(pairs, 1):
        img, gt = read_pair(pair)
        t0 = time.perf_counter()
        prob = predict_frame(predict, img, spec, pre.size, pre)
        elapsed += time.perf_counter() - t0
        ms.update(prob, gt, pair.name)
        probs[pair.name] = prob
        bar.update(i)
    bar.close()
    return ms, probs, 1000 * elapsed / max(len(pairs), 1)


FAR_MARGIN_PX = 10  # "far from any crack": beyond a wide crack's edge plus the label's slop
SYNTHETIC_SIZE = (320, 480)  # CrackForest's frame size: the released model runs well there
MIN_COMPONENT_PX = 5  # the daemon's model.min_component_px default: smaller regions are not reported


def far_from_crack(pairs: Sequence[Pair], probs: dict[str, np.ndarray], threshold: float,
                   margin: int = FAR_MARGIN_PX) -> dict[str, Any]:
    """False alarms on real road: flagged pixels farther than ``margin`` px from any labelled crack."""
    from trainer.data import read_mask

    far = flagged = 0
    for pair in pairs:
        gt = read_mask(pair.mask)
        away = cv2.distanceTransform((~gt).astype(np.uint8), cv2.DIST_L2, 3) > margin
        far += int(away.sum())
        flagged += int((away & (probs[pair.name] >= threshold)).sum())
    return {"margin_px": margin, "pixels": far, "flagged": flagged, "rate": flagged / far if far else 0.0,
            "definition": f"share of pixels more than {margin} px from any labelled crack that reach the threshold"}


def crack_free_synthetic(predict, spec: InputSpec, mode: str, size: tuple[int, int], threshold: float,
                         frames: int, seed: int = 0, frame_size: tuple[int, int] = SYNTHETIC_SIZE) -> dict[str, Any]:
    """False alarms on synthetic crack-free road (trainer.augment.synthetic_road), one distractor kind per
    frame in turn (``trainer.augment.DISTRACTORS``: markings, joints, studs, oil, shadow, gradient, wet, repair
    patches, tar spots): pixels flagged and frames with a flagged region of at least MIN_COMPONENT_PX (what
    the daemon would report)."""
    from trainer.augment import DISTRACTORS, synthetic_road

    pre = Preprocessor(spec, frame_size_for(mode, size), max_side=native_max_side(spec)[0])
    by_kind: dict[str, list[int]] = {k: [0, 0, 0] for k in DISTRACTORS}  # frames, flagged pixels, frames flagged
    pixels = 0
    for i in range(frames):
        kind = DISTRACTORS[i % len(DISTRACTORS)]
        img = synthetic_road(np.random.default_rng([seed, i]), *frame_size, n_distractors=2, kinds=(kind,))
        hit = predict_frame(predict, img, spec, pre.size, pre) >= threshold
        n, _, stats, _ = cv2.connectedComponentsWithStats(hit.astype(np.uint8), connectivity=8)
        reported = bool(n > 1 and stats[1:, cv2.CC_STAT_AREA].max() >= MIN_COMPONENT_PX)
        row = by_kind[kind]
        row[0] += 1
        row[1] += int(hit.sum())
        row[2] += int(reported)
        pixels += hit.size
    total = [sum(r[j] for r in by_kind.values()) for j in range(3)]
    per = frame_size[0] * frame_size[1]
    return {"frames": total[0], "frame_size": list(frame_size), "seed": seed,
            "pixel_rate": total[1] / pixels if pixels else 0.0,
            "frame_rate": total[2] / total[0] if total[0] else 0.0,
            "by_kind": {k: {"frames": r[0], "pixel_rate": r[1] / (r[0] * per) if r[0] else 0.0,
                            "frame_rate": r[2] / r[0] if r[0] else 0.0} for k, r in by_kind.items() if r[0]},
            "definition": ("synthetic crack-free asphalt with two distractors of one kind per frame: pixel_rate = "
                           "flagged pixels / all pixels; frame_rate = frames with a flagged region of at least "
                           f"{MIN_COMPONENT_PX} px (8-connected), what the daemon would report")}


def overlay(img: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The photo, dimmed, with found crack green, false alarms red and missed crack blue (BGR)."""
    out = (img.astype(np.float32) * 0.6).astype(np.uint8)
    out[pred & gt] = (0, 255, 0)
    out[pred & ~gt] = (0, 0, 255)
    out[~pred & gt] = (255, 0, 0)
    return out


def _caption(img: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((22, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, img])


def side_by_side(img: np.ndarray, gt: np.ndarray, pred: np.ndarray, name: str, f1_tol: float) -> np.ndarray:
    grey = lambda m: cv2.cvtColor(m.astype(np.uint8) * 255, cv2.COLOR_GRAY2BGR)  # noqa: E731
    sep = np.full((img.shape[0], 4, 3), 255, np.uint8)
    row = np.hstack([img, sep, grey(gt), sep, grey(pred)])
    return _caption(row, f"{name}: photo | ground truth | prediction   F1(2px) {f1_tol:.3f}")


def _fit_width(rows: list[np.ndarray]) -> list[np.ndarray]:
    w = max(r.shape[1] for r in rows)
    return [cv2.copyMakeBorder(r, 0, 0, 0, w - r.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255)) for r in rows]


def run_eval(model: str | Path, data: str | Path | Sequence[str | Path], split: str, out_dir: str | Path,
             mode: str = "resize", threshold: float | None = None, pick_threshold: bool = False,
             val_fraction: float = 0.1, val_seed: int = 0, max_images: int = 0, worst: int = 4,
             figure_rows: int = 4, device: str = "cpu", threads: int | None = None, write_card: bool = False,
             size: tuple[int, int] | None = None, crack_free: int = 0) -> dict[str, Any]:
    """Evaluate, write the report, overlays and figure under ``out_dir``; returns the report.

    With several datasets each is judged on its own ``split`` (report under ``out_dir/<set>/``), and
    ``pick_threshold`` picks one threshold for all by the mean over sets of each set's F1(2px) (as
    training validation does); the returned report is the combined one, its per-set reports under
    ``sets``.  ``max_images`` then takes a fixed even spread of each set, as training validation.
    """
    if pick_threshold and split not in VAL_ALIASES:
        raise ConfigError(f"--pick-threshold chooses on validation only; split {split!r} is not one of "
                          f"{', '.join(VAL_ALIASES)}")
    if pick_threshold and threshold is not None:
        raise ConfigError("give either --threshold or --pick-threshold, not both")
    if mode not in ("resize", "native"):
        raise ConfigError(f"mode {mode!r}: choose resize or native")
    datas = [data] if isinstance(data, (str, Path)) else list(data)
    if not datas:
        raise ConfigError("eval: no --data")
    names = [Path(d).name for d in datas]
    if len(set(names)) != len(names):
        raise ConfigError(f"eval: the same dataset name twice in --data ({', '.join(names)})")
    m = load_model(model, device, threads)
    if size is not None:
        m.input_size = tuple(size)
    thresholds = sorted(set(DEFAULT_THRESHOLDS) | ({round(threshold, 4)} if threshold is not None else set())
                        | {round(m.threshold, 4)})
    scored = {}
    for d in datas:
        pairs = list_pairs(d, split, val_fraction, val_seed)
        if max_images and len(pairs) > max_images:
            pairs = (pairs[:max_images] if len(datas) == 1
                     else [pairs[int(i * len(pairs) / max_images)] for i in range(max_images)])
        log.info("event=eval model=%s data=%s split=%s images=%d mode=%s", model, d, split, len(pairs), mode)
        scored[Path(d).name] = (d, pairs, *score(m.predict, pairs, m.spec, mode, m.input_size, thresholds))
    if threshold is not None:
        thr, source = round(threshold, 4), "flag"
    elif pick_threshold:
        if len(datas) == 1:
            thr, source = scored[names[0]][2].best_threshold(), f"picked on {split} (best F1 2px)"
        else:
            thr = mean_over_sets({n: v[2] for n, v in scored.items()})[0]
            source = f"picked on {split} of {'+'.join(names)} (best mean over sets of F1 2px)"
    else:
        thr, source = round(m.threshold, 4), m.threshold_source
    reports = {}
    for name, (d, pairs, ms, probs, ms_per_image) in scored.items():
        sub = Path(out_dir) if len(datas) == 1 else Path(out_dir) / name
        reports[name] = _report(model, m, d, split, mode, pairs, ms, probs, ms_per_image, thr, source, sub, worst,
                                figure_rows, crack_free if name == names[0] else 0)
        if write_card:
            _update_card(model, reports[name], pick_threshold)
    if len(datas) == 1:
        return reports[names[0]]
    combined = _combined(model, m, split, mode, thr, source, reports)
    (Path(out_dir) / "report.json").write_text(json.dumps(combined, indent=2) + "\n")
    if write_card:
        from models.card import load_card, write_card as write

        card = load_card(model)
        card.metrics[f"{'+'.join(names)}:{split}@{mode}"] = {k: combined[k] for k in (
            "threshold", "threshold_source", "mean_f1_tol", "mean_iou", "sets")}
        write(card, model)
    log.info("event=eval_combined split=%s sets=%d threshold=%.2f mean_f1_tol=%.4f %s", split, len(datas), thr,
             combined["mean_f1_tol"], " ".join(f"f1_tol@{n}={v['f1_tol']:.4f}" for n, v in combined["sets"].items()))
    return combined


def _combined(model, m: LoadedModel, split: str, mode: str, thr: float, source: str,
              reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    sets = {n: {"images": r["images"], "f1_tol": r["metrics"]["tol2"]["f1"], "f1": r["metrics"]["strict"]["f1"],
                "iou": r["metrics"]["strict"]["iou"], "precision": r["metrics"]["strict"]["precision"],
                "recall": r["metrics"]["strict"]["recall"],
                "fp_far_rate": r["false_positives"]["far_from_crack"]["rate"]} for n, r in reports.items()}
    first = next(iter(reports.values()))
    return {"model": str(model), "model_sha256": m.sha256, "model_graph_sha256": first["model_graph_sha256"],
            "kind": m.kind, "split": split, "mode": mode, "threshold": thr, "threshold_source": source,
            "images": sum(s["images"] for s in sets.values()),
            "mean_f1_tol": float(np.mean([s["f1_tol"] for s in sets.values()])),
            "mean_iou": float(np.mean([s["iou"] for s in sets.values()])), "sets": sets,
            "false_positives": {k: v for k, v in first["false_positives"].items() if k == "synthetic_crack_free"},
            "ms_per_image": round(float(np.mean([r["ms_per_image"] for r in reports.values()])), 1),
            "definition": "mean over sets of each set's own figure at one common threshold"}


def _report(model, m: LoadedModel, data, split: str, mode: str, pairs: Sequence[Pair], ms: MetricSet,
            probs: dict[str, np.ndarray], ms_per_image: float, thr: float, source: str, out_dir: Path,
            worst: int, figure_rows: int, crack_free: int) -> dict[str, Any]:
    """One set's report.json, worst overlays and figure at threshold ``thr``."""
    summary = ms.summary(thr)
    false_positives = {"far_from_crack": far_from_crack(pairs, probs, thr)}
    if crack_free:
        false_positives["synthetic_crack_free"] = crack_free_synthetic(m.predict, m.spec, mode, m.input_size, thr,
                                                                       crack_free)
    per_image = sorted(ms.images_at(thr), key=lambda r: r.f1_tol)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_name = {p.name: p for p in pairs}
    worst_rows = per_image[:worst]
    for r in worst_rows:
        img, gt = read_pair(by_name[r.name])
        cv2.imwrite(str(out_dir / f"worst_{r.name}.png"),
                    _caption(overlay(img, gt, probs[r.name] >= thr), f"{r.name} F1(2px) {r.f1_tol:.3f}"))
    if per_image and figure_rows:
        idx = sorted({round(i * (len(per_image) - 1) / max(figure_rows - 1, 1)) for i in range(figure_rows)})
        rows = []
        for i in idx:
            r = per_image[i]
            img, gt = read_pair(by_name[r.name])
            rows.append(side_by_side(img, gt, probs[r.name] >= thr, r.name, r.f1_tol))
        cv2.imwrite(str(out_dir / "figure.png"), np.vstack(_fit_width(rows)))
    report = {
        "model": str(model), "model_sha256": m.sha256, "kind": m.kind,
        # What --write-card leaves alone (it rewrites the embedded card, so the file hash moves).
        "model_graph_sha256": _identity(model, m), "data": str(data), "split": split,
        "images": len(pairs), "mode": mode, "input_size": list(m.input_size) if mode == "resize" else f"native/{m.spec.size_multiple}",
        "threshold": thr, "threshold_source": source, "metrics": summary,
        "false_positives": false_positives, "curve": ms.curve(), "ms_per_image": round(ms_per_image, 1),
        "per_image": [r.__dict__ for r in per_image], "worst": [r.name for r in worst_rows],
        # The [H, W] the model ran at: what a card's validated_sizes records.
        "sizes": ([list(m.input_size)] if mode == "resize"
                  else sorted({padded_size(*p.shape[:2], m.spec.size_multiple) for p in probs.values()})),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    syn = false_positives.get("synthetic_crack_free", {})
    log.info("event=eval_done data=%s split=%s threshold=%.2f f1_tol=%.4f f1=%.4f iou=%.4f ms_per_image=%.0f "
             "fp_far_rate=%.5f fp_synthetic_frame_rate=%s report=%s",
             Path(data).name, split, thr, summary["tol2"]["f1"], summary["strict"]["f1"], summary["strict"]["iou"],
             ms_per_image, false_positives["far_from_crack"]["rate"], f"{syn['frame_rate']:.3f}" if syn else "-",
             out_dir / "report.json")
    return report


def _update_card(model: str | Path, report: dict[str, Any], picked: bool) -> None:
    """Record the figures in the ONNX file's card; a picked threshold becomes the card's threshold."""
    from models.card import load_card, write_card

    if Path(model).suffix != ".onnx":
        raise ConfigError("--write-card needs an .onnx model with its card")
    card = load_card(model)
    key = f"{Path(report['data']).name}:{report['split']}@{report['mode']}"
    s = report["metrics"]
    card.metrics[key] = {"images": report["images"], "threshold": report["threshold"],
                         "threshold_source": report["threshold_source"], "strict": s["strict"], "tol2": s["tol2"],
                         "published_A": s["published_A"], "published_M": s["published_M"],
                         "ms_per_image": report["ms_per_image"], "input_size": report["input_size"],
                         "false_positives": report["false_positives"]}
    card.metrics["definitions"] = s["definitions"]
    sizes = {tuple(x) for x in card.validated_sizes} | {tuple(x) for x in report.get("sizes", [])}
    card.validated_sizes = sorted(sizes)
    if picked:
        # A threshold picked in one mode holds in that mode: consumers follow the card's `inference`.
        card.threshold = report["threshold"]
        card.inference = report["mode"]
    write_card(card, model)
