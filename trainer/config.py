"""The settings of a training run (teacher, plain or distilled student), one pydantic model.

Precedence: command-line flags > environment (``CRACK_TRAIN_<FIELD>``) > TOML file (``--config``,
its ``[train]`` table or its top level) > defaults, applied by the shared loader
(:mod:`common.settings`).  Unknown keys are refused, in the file and in the environment
(``CRACK_TRAIN_BATCHSIZE`` is an error naming it), all of them at once.
"""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common import settings
from trainer.errors import ConfigError

ENV_PREFIX = "CRACK_TRAIN_"


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    arch: str = Field("student", description="Registered model variant: student, teacher, student-mcld")
    data: list[str] = Field(default_factory=lambda: ["../shared/datasets/crackforest:train"],
                            description="Training sets as PATH[:SPLIT][@WEIGHT]; several are mixed by weight")
    val_data: str | None = Field(None, description="Validation set PATH[:SPLIT]; default: the first --data with split val")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of train carved out as validation when a set has no val split")
    val_seed: int = Field(0, description="Seed of the validation carve (keep it fixed across steps)")
    val_max_images: int = Field(8, ge=0, description="Validate on at most this many images per epoch (0 = all)")
    val_size: int = Field(448, ge=0, description="Validate at SxS resize as the daemon does (0 = native size padded to 4)")
    loss: Literal["bce-dice", "asymmetric"] = Field("bce-dice", description="Class-balanced BCE+Dice or the published asymmetric loss")
    dilate_kernel: int = Field(3, ge=1, description="Label dilation kernel size (published: 3)")
    dilate_iterations: int | None = Field(None, ge=0, description="Label dilation iterations; default 3 for asymmetric, 0 for bce-dice")
    crop: int = Field(224, ge=8, description="Training crop side in pixels, a multiple of 4")
    scale_min: float = Field(0.6, gt=0, description="Smallest random rescale before cropping")
    scale_max: float = Field(1.6, gt=0, description="Largest random rescale before cropping")
    max_aspect: float = Field(1.6, ge=1, description="Largest random aspect-ratio change (daemon squeezes 480x320 to 448x448: 1.5)")
    augment: bool = Field(True, description="Apply the published flips and colour changes")
    distractor_prob: float = Field(0.3, ge=0, le=1, description=(
        "Share of training crops with road distractors drawn in, label unchanged: lane markings, slab joints, "
        "road studs, oil stains, shadows, brightness gradients, wet patches (needs --augment)"))
    val_sets: Literal["each", "first"] = Field("each", description=(
        "Validate on each training set's own val split, reported per set, picked on their mean F1(2px) "
        "('each'), or only on the first set's ('first'); --val-data overrides both"))
    batch_size: int = Field(4, ge=1, description="Crops per step (published: 2 teacher, 4 student)")
    samples_per_epoch: int = Field(200, ge=1, description="Crops drawn per epoch")
    epochs: int = Field(100, ge=1, description="Most epochs to run (published: 100)")
    optimizer: Literal["adamw", "rmsprop"] = Field("adamw", description="AdamW, or RMSprop as published")
    lr: float | None = Field(None, gt=0, description="Learning rate; default 1e-3 for AdamW, 5e-5 (published) for RMSprop")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description=(
        "Raise the learning rate linearly from 0 over this many steps (a fresh AdamW at full rate knocks a "
        "fine-tuned model back: 0.846 -> 0.823 in three epochs at 3e-4)"))
    ema_decay: float = Field(0.0, ge=0, lt=1, description=(
        "Keep an exponential moving average of the weights (and BatchNorm statistics) at this decay per step, "
        "validate it and save it as best.pt (0 = off; 0.998 averages about the last 500 steps)"))
    lr_patience: int = Field(5, ge=1, description="Halve the learning rate after this many epochs without val improvement")
    lr_factor: float = Field(0.5, gt=0, lt=1, description="Learning-rate factor on plateau")
    min_lr: float = Field(1e-8, ge=0, description="Learning-rate floor")
    early_stop: int = Field(30, ge=1, description="Stop after this many epochs without val improvement")
    seed: int = Field(0, description="Seed of the weights, the crops and the augmentations")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N")
    amp: bool = Field(True, description="Mixed precision: bf16 autocast + channels-last on CPUs with native bf16, bf16/fp16 on CUDA (--no-amp: fp32)")
    run_dir: Path = Field(Path("runs/run"), description="Where checkpoints, logs and the plot go")
    resume: bool = Field(False, description="Continue from run_dir/last.pt")
    sync_bn: bool = Field(True, description=(
        "Under torchrun: BatchNorm statistics over the global batch, as one process computes them "
        "(--no-sync-bn: each rank's share alone)"))
    dist_timeout: float = Field(1800.0, gt=0, description=(
        "Under torchrun: seconds a rank waits at a collective (rank 0 validates while the others wait)"))
    init: Path | None = Field(None, description=(
        "Start from this checkpoint's weights (fine-tuning on your own roads); optimiser and epochs start afresh"))
    # Distillation (step 3 only)
    labels: Path | None = Field(None, description="Soft-label folder written by `crack-train labels` (with manifest.json)")
    teacher: Path | None = Field(None, description="Teacher checkpoint: when given, the labels must come from it")
    kd: Literal["standard", "hyperthermal", "non-isothermal"] = Field("standard", description="Distillation variant")
    temperatures: list[float] | None = Field(None, description="Non-isothermal: student temperatures for h, x, y, mix")
    t_real: float | None = Field(None, gt=0, description="Temperature of mix_for_real (default 1 standard, T hyperthermal)")
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the soft terms; the hard term gets 1 - alpha")

    @model_validator(mode="after")
    def _check(self) -> "TrainSettings":
        if self.crop % 4:
            raise ValueError(f"crop {self.crop} must be a multiple of 4 (e.g. {self.crop // 4 * 4 or 4})")
        if self.val_size % 4:
            raise ValueError(f"val_size {self.val_size} must be a multiple of 4")
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min {self.scale_min} > scale_max {self.scale_max}")
        if self.temperatures is not None and len(self.temperatures) != 4:
            raise ValueError("temperatures needs four values: h, x, y, mix")
        return self

    @property
    def dilation(self) -> int:
        if self.dilate_iterations is not None:
            return self.dilate_iterations
        return 3 if self.loss == "asymmetric" else 0

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-3 if self.optimizer == "adamw" else 5e-5


S = typing.TypeVar("S", bound=BaseModel)


def load_section_settings(cls: type[S], section: str, toml_path: Path | None, flags: dict[str, Any],
                          env_prefix: str = ENV_PREFIX) -> S:
    """Flags (None = not given) > ``env_prefix`` environment > the TOML file's ``[section]`` table (or its top level)."""
    try:
        return settings.load(cls, env_prefix=env_prefix, toml=toml_path, section=section, flags=flags)
    except settings.SettingsError as e:
        raise ConfigError(str(e)) from None


def load_settings(toml_path: Path | None = None, **flags: Any) -> TrainSettings:
    """Build the training settings from flags (None = not given), environment and an optional TOML file."""
    return load_section_settings(TrainSettings, "train", toml_path, flags)
