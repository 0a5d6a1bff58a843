"""Step 3: the student, distilled from the teacher's soft labels, or plain (no teacher).

Distillation variants (reference, "Knowledge distillation"):
- ``standard``: student outputs at the labels' T against the soft labels; ``mix_for_real`` at 1.
- ``hyperthermal``: the same, with ``mix_for_real`` at T too.
- ``non-isothermal``: one temperature per student output (``temperatures``), ``t_real`` as given.
The deployed output is ``softmax(mix / t_real)``, so the checkpoint records ``t_real``.
"""
from __future__ import annotations

import logging

from models import create_model
from trainer.config import TrainSettings
from trainer.errors import ConfigError
from trainer.labels import load_manifest, soft_label_index
from trainer.loop import RunResult, Validator, fit, pick_device
from trainer.losses import DistillationLoss
from trainer.sets import crop_dataset, train_pair_sets, val_sets
from trainer.teacher import train_supervised

log = logging.getLogger(__name__)


def kd_temperatures(cfg: TrainSettings, label_t: float) -> tuple[list[float], float]:
    """(student temperatures for h, x, y, mix; t_real) for the chosen variant."""
    if cfg.kd == "standard":
        return [label_t] * 4, cfg.t_real or 1.0
    if cfg.kd == "hyperthermal":
        return [label_t] * 4, cfg.t_real or label_t
    if cfg.temperatures is None:
        raise ConfigError("non-isothermal KD needs --temperatures H X Y MIX (the student's per-output T)")
    return list(cfg.temperatures), cfg.t_real or 1.0


def train_plain_student(cfg: TrainSettings) -> RunResult:
    return train_supervised(cfg, "plain-student")


def train_distilled_student(cfg: TrainSettings) -> RunResult:
    import torch

    if cfg.labels is None:
        raise ConfigError("distillation needs --labels DIR (from `crack-train labels`), or use --plain")
    sets = train_pair_sets(cfg)
    manifest = load_manifest(cfg.labels, [p for pairs, _ in sets for p in pairs], cfg.teacher)
    temps, t_real = kd_temperatures(cfg, manifest["temperature"])
    torch.manual_seed(cfg.seed)
    net = create_model(cfg.arch)
    train_set = crop_dataset(cfg, sets, soft_label_index(cfg.labels, manifest))
    held_out = val_sets(cfg)
    validator = Validator(held_out, cfg.val_size, pick_device(cfg.device), temperature=t_real, arch=cfg.arch)
    meta = {"arch": cfg.arch, "role": "distilled-student", "kd": cfg.kd, "deploy_temperature": t_real,
            "label_temperature": manifest["temperature"], "student_temperatures": temps, "alpha": cfg.alpha,
            "teacher_sha256": manifest["teacher_sha256"], "loss": cfg.loss, "data": list(cfg.data),
            "train_images": sum(len(p) for p, _ in sets), "val_images": [str(p.image) for ps in held_out.values() for p in ps],
            "seed": cfg.seed}
    log.info("event=distill kd=%s label_T=%g student_T=%s t_real=%g alpha=%g", cfg.kd, manifest["temperature"],
             temps, t_real, cfg.alpha)
    return fit(net, train_set, DistillationLoss(cfg.loss, temps, t_real, cfg.alpha), validator, cfg, meta)
