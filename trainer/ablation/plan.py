"""What the ablation trains and judges, where each artefact lives, and the settings that say so.

Settings: flags > environment (``CRACK_ABLATION_<FIELD>``) > ``--config FILE.toml`` (an
``[ablation]`` table) > defaults, read by the shared loader (:mod:`common.settings`).  A work
folder records the settings that define its rows (``settings.json``) and refuses to resume
under others.
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common import exits
from trainer.errors import ConfigError, TrainerError

ENV_PREFIX = "CRACK_ABLATION_"
# TrainSettings fields the ablation sets itself; setting them through teacher_args / student_args
# would silently change what a row means.
RESERVED_FIELDS = ("data", "run_dir", "labels", "teacher", "kd", "resume", "val_fraction", "val_seed", "val_data",
                   "val_size", "val_max_images", "seed", "alpha", "arch", "t_real", "temperatures", "crop",
                   "batch_size", "samples_per_epoch", "epochs", "device", "threads", "workers", "init")
# Settings that define what was trained and judged; a work folder refuses to resume under others.
IDENTITY_KEYS = ("cfd", "extra_data", "temperatures", "hyper_t", "seed", "val_fraction", "val_seed", "val_max_images",
                 "size", "teacher_arch", "teacher_crop", "teacher_batch", "teacher_samples", "teacher_epochs",
                 "teacher_args", "student_arch", "student_crop", "student_batch", "student_samples", "student_epochs",
                 "student_args", "alpha")


class StepFailed(TrainerError):
    """A step of the ablation failed; the message names the step and its log."""

    exit_code = exits.SOFTWARE


class Interrupted(Exception):
    """Ctrl-C or SIGTERM reached the ablation: running steps were stopped, their checkpoints kept."""


class AblationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    cfd: Path = Field(Path("../shared/datasets/crackforest"),
                      description="CrackForest folder: train split trains, carved val picks thresholds, test judges")
    extra_data: list[str] = Field(default_factory=list,
                                  description="More training sets as PATH[:SPLIT][@WEIGHT], e.g. "
                                              "crack500-crops:train@0.5")
    work: Path = Field(Path("runs/ablation"), description="Work folder: runs, labels, ONNX files, reports (resumable)")
    collect: Path | None = Field(None, description="Folder for the files to take away (at most --collect-max-files)")
    temperatures: list[float] = Field(default_factory=lambda: [5.0, 10.0, 15.0],
                                      description="Soft-label temperatures T; one standard-KD student each")
    hyper_t: str = Field("10", description="Hyperthermal KD at this T (runs in parallel), or 'best': after standard "
                                           "KD, at the T with the best validation F1(2px)")
    jobs: int = Field(5, ge=1, description="Training processes at a time (labels and students)")
    device: str = Field("auto", description="Training device: auto, cpu, cuda or cuda:N")
    threads: int | None = Field(None, ge=1, description="torch CPU threads per training process")
    workers: int = Field(0, ge=0, description="DataLoader worker processes per training process")
    seed: int = Field(0, description="Seed of every run (weights, crops, augmentations)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of CrackForest train carved out as validation")
    val_seed: int = Field(0, description="Seed of the validation carve")
    val_max_images: int = Field(8, ge=0, description="Validation images per epoch during training (0 = all)")
    size: int = Field(448, ge=4, description="Frame side for validation, eval, export, profile and CPU timing")
    teacher_arch: str = Field("teacher", description="Registered variant of the teacher (teacher: d=64, 8 blocks, "
                                                     "32.9 M parameters)")
    teacher_crop: int = Field(320, ge=8, description="Teacher training crop side (multiple of 4)")
    teacher_batch: int = Field(8, ge=1, description="Teacher batch size")
    teacher_samples: int = Field(400, ge=1, description="Teacher crops per epoch")
    teacher_epochs: int = Field(200, ge=1, description="Teacher epoch cap (the budget usually stops it first)")
    teacher_budget_s: float = Field(170, gt=0, description="Teacher wall-clock budget in seconds")
    teacher_args: str = Field("", description="Extra crack-train teacher flags, e.g. '--loss asymmetric --lr 5e-4'")
    student_arch: str = Field("student", description="Registered variant of every student (student: d=16, 4 blocks, "
                                                     "1.18 M parameters; student-mcld: depthwise)")
    student_crop: int = Field(256, ge=8, description="Student training crop side (multiple of 4)")
    student_batch: int = Field(16, ge=1, description="Student batch size")
    student_samples: int = Field(800, ge=1, description="Student crops per epoch")
    student_epochs: int = Field(200, ge=1, description="Student epoch cap (the budget usually stops it first)")
    student_budget_s: float = Field(200, gt=0, description="Wall-clock budget of each student in seconds")
    student_args: str = Field("", description="Extra crack-train student flags, the same for every student")
    alpha: float = Field(0.9, ge=0, le=1, description="KD weight of the soft terms (hard term: 1 - alpha)")
    labels_timeout_s: float = Field(600, gt=0, description="Longest a soft-label run may take before it is an error")
    teacher_eval: Literal["onnx", "checkpoint"] = Field(
        "onnx", description="Judge the teacher through its ONNX file (CPU, as the daemon) or its checkpoint on "
                            "--device")
    eval_threads: int = Field(0, ge=0, description="CPU threads of eval and export in this process, ONNX Runtime and "
                                                   "torch (0: their default)")
    test_max_images: int = Field(0, ge=0, description="Judge only the first N test images (0 = all 46; toy runs only)")
    bench_runs: int = Field(20, ge=1, description="Timed CPU runs per student; the median is reported")
    teacher_bench_runs: int = Field(5, ge=1, description="Timed CPU runs for the teacher (1338 GFLOPs a frame)")
    bench_warmup: int = Field(3, ge=0, description="Untimed CPU runs before timing")
    bench_threads: int = Field(0, ge=0, description="ONNX Runtime CPU threads for timing (0: its default)")
    total_budget_s: float = Field(0, ge=0, description="Whole-command limit: training is cut short to keep the "
                                                      "reserves below (0: no limit)")
    labels_reserve_s: float = Field(60, ge=0, description="With --total-budget-s: seconds kept for the labels")
    eval_reserve_s: float = Field(150, ge=0, description="With --total-budget-s: seconds kept for export, eval, "
                                                         "timing and collect")
    progress_every_s: float = Field(30, gt=0, description="Seconds between progress lines while training")
    collect_max_files: int = Field(8, ge=3, description="Most files in --collect")
    collect_max_mib: float = Field(15.5, gt=0, description="Largest file in --collect, MiB")
    collect_max_total_mib: float = Field(60, gt=0, description="Most MiB in --collect altogether")
    title: str = Field("Distillation ablation", description="Heading of ablation.md")

    @field_validator("hyper_t", mode="before")
    @classmethod
    def _hyper(cls, v: Any) -> str:
        v = str(v)
        if v == "best":
            return v
        try:
            t = float(v)
        except ValueError as e:
            raise ValueError(f"hyper_t {v!r}: give a temperature or 'best'") from e
        if not t > 0:
            raise ValueError(f"hyper_t {v!r} must be > 0")
        return f"{t:g}"

    @model_validator(mode="after")
    def _check(self) -> "AblationSettings":
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            raise ValueError(f"temperatures {self.temperatures}: give one or more values > 0")
        if len({f"{t:g}" for t in self.temperatures}) != len(self.temperatures):
            raise ValueError(f"temperatures {self.temperatures}: each T once")
        if self.hyper_t != "best" and self.hyper_t not in {f"{t:g}" for t in self.temperatures}:
            raise ValueError(f"hyper_t {self.hyper_t}: not among temperatures {self.temperatures} (no labels for it)")
        for name in ("size", "teacher_crop", "student_crop"):
            if getattr(self, name) % 4:
                raise ValueError(f"{name} {getattr(self, name)} must be a multiple of 4")
        for name in ("teacher_args", "student_args"):
            given = self.train_overrides(name.split("_")[0])
            for key in RESERVED_FIELDS:
                if key in given:
                    raise ValueError(f"{name}: --{key.replace('_', '-')} is set by the ablation itself; "
                                     "use its own setting")
        return self

    def train_overrides(self, role: str) -> dict[str, Any]:
        """The TrainSettings fields that ``teacher_args`` / ``student_args`` set (crack-train flags)."""
        from trainer.cli import parse_settings_flags

        name = f"{role}_args"
        try:
            return parse_settings_flags(shlex.split(getattr(self, name)))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None


def load_settings(toml_path: Path | None = None, **flags: Any) -> AblationSettings:
    """Flags (None = not given) > CRACK_ABLATION_* environment > TOML ``[ablation]`` table > defaults."""
    from trainer.config import load_section_settings

    return load_section_settings(AblationSettings, "ablation", toml_path, flags, env_prefix=ENV_PREFIX)


def add_flags(p: Any) -> None:
    """One ``--flag`` per setting on argparse parser ``p``, default None (unset flags leave env/TOML alone)."""
    import argparse
    import typing

    p.add_argument("--config", type=Path, help="TOML file with an [ablation] table of these settings")
    for name, f in AblationSettings.model_fields.items():
        ann = f.annotation
        kw: dict[str, Any] = {"default": None, "help": f.description, "dest": name}
        if ann is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(ann) is list:
            kw["nargs"] = "+"
        elif typing.get_origin(ann) is Literal:
            kw["choices"] = typing.get_args(ann)
        p.add_argument("--" + name.replace("_", "-"), **kw)


# --------------------------------------------------------------------------------------------- plan


@dataclass
class Model:
    """One row of the table."""

    name: str
    label: str
    role: Literal["teacher", "plain", "kd"]
    arch: str
    kd: str | None = None
    temperature: float | None = None
    after_kd: bool = False  # hyperthermal at the best T: waits for the standard-KD students


def tname(t: float) -> str:
    return f"{t:g}"


def plan_students(cfg: AblationSettings) -> list[Model]:
    arch = cfg.student_arch
    who = "student" if arch == "student" else arch
    rows = [Model("plain", f"{who}, no teacher", "plain", arch)]
    rows += [Model(f"kd-T{tname(t)}", f"{who}, standard KD, T={tname(t)}", "kd", arch, "standard", t)
             for t in cfg.temperatures]
    if cfg.hyper_t != "best":
        t = float(cfg.hyper_t)
        rows.append(Model(f"hyper-T{tname(t)}", f"{who}, hyperthermal KD, T={tname(t)}", "kd", arch,
                          "hyperthermal", t))
    else:
        rows.append(Model("hyper-best", f"{who}, hyperthermal KD, best T", "kd", arch, "hyperthermal", None,
                          after_kd=True))
    return rows


def teacher_model(cfg: AblationSettings) -> Model:
    label = "teacher" if cfg.teacher_arch == "teacher" else f"teacher ({cfg.teacher_arch})"
    return Model("teacher", label, "teacher", cfg.teacher_arch)


class Paths:
    """Where everything of one work folder lives (relative layout, so a collected tree unpacks as-is)."""

    def __init__(self, work: Path) -> None:
        self.work = work

    def run(self, name: str) -> Path:
        return self.work / "runs" / name

    def labels(self, t: float) -> Path:
        return self.work / "labels" / f"T{tname(t)}"

    def job_log(self, name: str) -> Path:
        return self.work / "jobs" / f"{name}.log"

    def job_spec(self, name: str) -> Path:
        return self.work / "jobs" / f"{name}.json"

    def onnx(self, name: str) -> Path:
        return self.work / "onnx" / f"{name}.onnx"

    def eval(self, name: str, split: str) -> Path:
        return self.work / "eval" / f"{name}-{split}"

    def bench(self, name: str) -> Path:
        return self.work / "bench" / f"{name}.json"

    def profile(self, arch: str, size: int) -> Path:
        return self.work / "profile" / f"{arch}-{size}.json"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise StepFailed(f"{path}: not valid JSON ({e}); delete it to redo its step") from e


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def run_best_val(run: Path) -> float:
    """The best validation F1(2px) a training run logged (-1 before its first epoch)."""
    return max((float(r["val_f1_tol"]) for r in read_csv(run / "log.csv")), default=-1.0)


def sha256(path: Path) -> str:
    from models.card import sha256_file

    return sha256_file(path)


def identity(model: Path) -> str:
    """The model apart from its card: an eval's write_card rewrites the card inside the ONNX."""
    from models.card import graph_sha256

    return graph_sha256(model) if model.suffix == ".onnx" else sha256(model)


def check_work(cfg: AblationSettings) -> None:
    """A work folder resumes only under the settings that made it."""
    path = cfg.work / "settings.json"
    now = {k: v for k, v in json.loads(cfg.model_dump_json()).items() if k in IDENTITY_KEYS}
    old = read_json(path)
    if old is None:
        write_json(path, now)
        return
    diff = [f"{k}: {old.get(k)!r} -> {now[k]!r}" for k in IDENTITY_KEYS if old.get(k) != now[k]]
    if diff:
        raise ConfigError(f"{path}: this work folder was made with other settings ({'; '.join(diff)}); "
                          "use another --work or delete it")
