"""Step 1: the teacher, trained on the hard labels with all four outputs supervised.

The same function trains the plain student (``arch="student"``): the baseline without a teacher.
"""
from __future__ import annotations

from models import create_model
from trainer.config import TrainSettings
from trainer.loop import RunResult, Validator, fit, pick_device
from trainer.losses import DeepSupervisionLoss
from trainer.sets import crop_dataset, train_pair_sets, val_sets


def train_supervised(cfg: TrainSettings, role: str) -> RunResult:
    """Train ``cfg.arch`` on hard labels only; ``role`` (teacher / plain-student) is recorded."""
    import torch

    torch.manual_seed(cfg.seed)
    net = create_model(cfg.arch)
    sets = train_pair_sets(cfg)
    train_set = crop_dataset(cfg, sets)
    held_out = val_sets(cfg)
    validator = Validator(held_out, cfg.val_size, pick_device(cfg.device), arch=cfg.arch)
    meta = {"arch": cfg.arch, "role": role, "deploy_temperature": 1.0, "loss": cfg.loss,
            "data": list(cfg.data), "train_images": sum(len(p) for p, _ in sets),
            "val_images": [str(p.image) for ps in held_out.values() for p in ps], "seed": cfg.seed}
    return fit(net, train_set, DeepSupervisionLoss(cfg.loss), validator, cfg, meta)


def train_teacher(cfg: TrainSettings) -> RunResult:
    return train_supervised(cfg, "teacher")
