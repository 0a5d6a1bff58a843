"""Step 2: the teacher's soft labels, written once as a distillation dataset.

For every training image the teacher's four attention-gated logits (h, x, y, mix) are divided by T
and passed through the softmax (several T from one pass; optionally the logits are first averaged over
flips, the born-again teacher of the reference's ablation); each crack probability is saved as an 8-bit grey PNG at the image's
own size (predicted at native size through the daemon's pre-processing, :mod:`models.preprocess`,
with the teacher variant's normalisation).  ``manifest.json`` records the
teacher checkpoint and its SHA-256, T, and every image with its SHA-256, so step 3 refuses labels
made by another teacher or for other images.

Under torchrun each rank labels every WORLD_SIZE-th image (the images are independent, so the files
are those one process writes); rank 0 gathers the entries and writes the one manifest once every
rank is done.  On several machines ``--out`` must be a folder they all see.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from models.card import sha256_file
from models.preprocess import Preprocessor
from models.registry import variant_defaults
from trainer.data import Pair, read_image
from trainer.errors import DataError, MissingInput
from trainer.losses import OUTPUTS

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """(network with the checkpoint's weights, its meta) from a ``best.pt``/``last.pt``."""
    from models import create_model
    from trainer.checkpoint import CheckpointError, read_checkpoint

    path = Path(path)
    ck = read_checkpoint(path, "checkpoint", device)
    meta = ck["meta"]
    try:
        net = create_model(meta["arch"])
        net.load_state_dict(ck["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint: {path}: not a crack-train checkpoint: {e}") from e
    return net.to(device).eval(), meta


def label_paths(out_dir: Path, pair: Pair) -> list[Path]:
    return [out_dir / pair.dataset / f"{pair.name}_{o}.png" for o in OUTPUTS]


def _teacher_logits(net, x, device: str, flips: bool, prec) -> dict:
    """The teacher's logits for one pre-processed image; with ``flips`` the mean over the identity,
    horizontal, vertical and both flips, each un-flipped first (one batch of four)."""
    import torch

    t = torch.from_numpy(x).to(device)
    dims = ((), (3,), (2,), (2, 3)) if flips else ((),)
    batch = torch.cat([t.flip(d) if d else t for d in dims])
    if prec.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(batch.device.type, dtype=prec.dtype, enabled=prec.autocast):
        outs = net(batch)
    return {k: torch.stack([outs[k][i:i + 1].float().flip(d) if d else outs[k][i:i + 1].float()
                            for i, d in enumerate(dims)]).mean(0) for k in OUTPUTS}


def generate_labels(teacher_ckpt: str | Path, pairs: Sequence[Pair], temperature: float, out_dir: str | Path,
                    device: str = "cpu", flips: bool = False, amp: bool = False) -> Path:
    """Write the soft labels of ``pairs`` and their manifest under ``out_dir``; returns the manifest."""
    return generate_label_sets(teacher_ckpt, pairs, {temperature: Path(out_dir)}, device, flips, amp)[0]


def generate_label_sets(teacher_ckpt: str | Path, pairs: Sequence[Pair], targets: dict[float, Path],
                        device: str = "cpu", flips: bool = False, amp: bool = False) -> list[Path]:
    """Soft labels at several temperatures from one teacher pass: ``targets`` maps T to its folder.

    The logits do not depend on T, so every image is run once (four times with ``flips``: the
    born-again teacher averaged over flips) and divided by each T.  With ``amp`` the teacher runs as
    training does (:func:`trainer.loop.choose_precision`: bf16 on CPUs with native bf16, 2.5x faster
    here); its logits' rounding is far below the labels' 8 bits at T >= 5.  Returns the manifests.
    """
    import torch
    import torch.nn.functional as F

    from trainer import distributed
    from trainer.loop import choose_precision

    if not targets or any(t <= 0 for t in targets):
        raise ValueError(f"temperatures must be > 0, got {sorted(targets)}")
    net, meta = load_checkpoint(teacher_ckpt, device)
    prec = choose_precision(device, amp)
    if prec.channels_last:
        net.to(memory_format=torch.channels_last)
    log.info("event=soft_labels_start images=%d precision=%s why=%r flips=%s", len(pairs), prec.name, prec.why, flips)
    pre = Preprocessor(variant_defaults(meta["arch"]), "native")
    entries = []  # the same for every T: the label paths are relative to each T's folder
    t0 = time.monotonic()
    mine = distributed.share(list(enumerate(pairs)))  # all of them in one process
    for done, (index, pair) in enumerate(mine, 1):
        img = read_image(pair.image)
        h, w = img.shape[:2]
        x, _ = pre(img)
        logits = _teacher_logits(net, x, device, flips, prec)
        digest = sha256_file(pair.image)
        for temperature, out_dir in targets.items():
            files = label_paths(out_dir, pair)
            files[0].parent.mkdir(parents=True, exist_ok=True)
            for name, f in zip(OUTPUTS, files):
                p = F.softmax(logits[name] / temperature, dim=1)[0, 0, :h, :w].cpu().numpy()
                cv2.imwrite(str(f), np.round(p * 255).astype(np.uint8))
        entries.append((index, {"image": str(pair.image.resolve()), "sha256": digest, "size": [h, w],
                                "labels": [str(f) for f in label_paths(Path(), pair)]}))  # relative to each T's folder
        if done % 50 == 0 or done == len(mine):
            log.info("event=soft_label image=%s done=%d/%d elapsed_s=%.0f temperatures=%s flips=%s",
                     pair.image.name, done, len(mine), time.monotonic() - t0,
                     ",".join(f"{t:g}" for t in targets), flips)
    paths = [out_dir / MANIFEST for out_dir in targets.values()]
    everyone = distributed.gather(entries)  # also the barrier: every rank's files are written
    if everyone is not None:
        images = [e for _, e in sorted(sum(everyone, []), key=lambda ie: ie[0])]
        teacher = {"teacher": str(Path(teacher_ckpt).resolve()), "teacher_sha256": sha256_file(teacher_ckpt),
                   "teacher_arch": meta.get("arch"), "teacher_tta": "mean over h/v flips" if flips else "none",
                   "teacher_precision": prec.name}
        for path, temperature in zip(paths, targets):
            _write_manifest(path, teacher, temperature, images)
    distributed.barrier()  # no rank returns before the manifests exist
    return paths


def _write_manifest(path: Path, teacher: dict, temperature: float, entries: list[dict]) -> None:
    manifest = {"version": 1, **teacher, "temperature": float(temperature), "outputs": list(OUTPUTS),
                "images": entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # the manifest is what marks the set complete: never half-written
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)


def load_manifest(label_dir: str | Path, pairs: Sequence[Pair], teacher: str | Path | None = None) -> dict:
    """The manifest, after checking it covers exactly these images (and came from ``teacher``)."""
    label_dir = Path(label_dir)
    path = label_dir / MANIFEST
    if not path.exists():
        raise MissingInput(f"{path}: no manifest; make the labels with `crack-train labels`")
    try:
        manifest = json.loads(path.read_text())
        images = {e["image"]: e for e in manifest["images"]}
        manifest["temperature"], manifest["teacher_sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: invalid soft-label manifest: {e}") from e
    if teacher is not None:
        actual = sha256_file(teacher)
        if actual != manifest["teacher_sha256"]:
            raise DataError(f"{path}: labels were made by teacher {manifest['teacher_sha256'][:12]}… "
                            f"({manifest.get('teacher')}), not by {teacher} ({actual[:12]}…)")
    for pair in pairs:
        entry = images.get(str(pair.image.resolve()))
        if entry is None:
            raise DataError(f"{path}: no soft labels for training image {pair.image}; "
                            f"remake the labels for this data")
        if entry["sha256"] != sha256_file(pair.image):
            raise DataError(f"{path}: training image {pair.image} changed since its soft labels were made")
        for rel in entry["labels"]:
            if not (label_dir / rel).exists():
                raise DataError(f"{label_dir / rel}: soft label listed in {path} is missing")
    return manifest


def soft_label_index(label_dir: str | Path, manifest: dict) -> dict[Path, list[Path]]:
    """Image path -> its four label files, in the order h, x, y, mix."""
    label_dir = Path(label_dir)
    return {Path(e["image"]): [label_dir / r for r in e["labels"]] for e in manifest["images"]}
