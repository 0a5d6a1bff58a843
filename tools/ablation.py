"""The distillation ablation in one command: teacher, soft labels, students, judged side by side.

    python tools/ablation.py --cfd .data/crackforest --extra-data .data/crack500-crops:train@0.5 \\
        --work runs/ablation --collect "$OUT" --total-budget-s 560

Stages, each the real ``crack-train`` command (``python -m trainer.cli``), each skipped when its
outputs already exist, so running the same command again resumes where it stopped:

1. **teacher**: ``crack-train teacher`` for at most ``--teacher-budget-s`` seconds of wall clock
   (then SIGTERM: the run keeps its last finished epoch and ``best.pt``).
2. **labels**: ``crack-train labels`` at every ``--temperatures`` T, as parallel processes.
3. **students**, up to ``--jobs`` at a time, each for at most ``--student-budget-s``: the plain
   student (no teacher), standard KD at every T, hyperthermal KD at ``--hyper-t`` (a number: run in
   parallel with the others; ``best``: after them, at the T whose standard-KD student scored best on
   validation).
4. **evaluate**, one model after another in this process: ``crack-train export`` (ONNX + card),
   ``crack-train eval --split val --pick-threshold --write-card`` (the threshold, from validation
   only), ``crack-train eval --split test --write-card`` (the CrackForest test images resized to
   ``--size`` and back, as the daemon runs them), ``crack-train profile`` (params, GFLOPs) and the
   median CPU time of ONNX Runtime on one ``--size`` frame.
5. **report**: ``ablation.json`` (raw figures) and ``ablation.md`` (the table) in ``--work``; with
   ``--collect DIR``, the files worth keeping packed into at most ``--collect-max-files`` files.

Settings: flags > environment (``CRACK_ABLATION_<FIELD>``) > ``--config FILE.toml`` (an
``[ablation]`` table) > defaults.  Exit status: 0 done, 2 usage, 65 bad data, 66 missing input,
70 a step failed, 78 bad setting, 130 interrupted (run the same command again to resume).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain script: `python tools/ablation.py`

from pydantic import Field, field_validator, model_validator  # noqa: E402
from pydantic_settings import BaseSettings, SettingsConfigDict  # noqa: E402

from common import exits  # noqa: E402
from trainer.errors import ConfigError, MissingInput, TrainerError  # noqa: E402

log = logging.getLogger("ablation")

# crack-train flags the tool sets itself; passing them through --teacher-args/--student-args would
# silently change what a row means.
RESERVED_FLAGS = ("--data", "--run-dir", "--labels", "--teacher", "--kd", "--plain", "--resume", "--val-fraction",
                  "--val-seed", "--val-data", "--val-size", "--val-max-images", "--seed", "--alpha", "--arch",
                  "--t-real", "--temperatures", "--crop", "--batch-size", "--samples-per-epoch", "--epochs",
                  "--device", "--threads", "--workers")
# Settings that define what was trained and judged; a work folder refuses to resume under others.
IDENTITY_KEYS = ("cfd", "extra_data", "temperatures", "hyper_t", "seed", "val_fraction", "val_seed", "val_max_images",
                 "size", "teacher_arch", "teacher_crop", "teacher_batch", "teacher_samples", "teacher_epochs",
                 "teacher_args", "student_arch", "student_crop", "student_batch", "student_samples", "student_epochs",
                 "student_args", "alpha")
GRACE_S = 60.0  # after SIGTERM, how long a run may take to stop before it is killed
MIN_JOB_S = 10.0  # a training run given less than this is not started


class StepFailed(TrainerError):
    """A crack-train step exited with an error; the message names the step and its log."""

    exit_code = exits.SOFTWARE


class Interrupted(Exception):
    """Ctrl-C or SIGTERM reached the tool: running steps were stopped, their checkpoints kept."""


class AblationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRACK_ABLATION_", extra="forbid", validate_default=True)

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
            for tok in shlex.split(getattr(self, name)):
                if tok.split("=")[0] in RESERVED_FLAGS:
                    raise ValueError(f"{name}: {tok.split('=')[0]} is set by the ablation itself; use its own setting")
        return self


def load_settings(toml_path: Path | None = None, **flags: Any) -> AblationSettings:
    """Flags (None = not given) > environment > TOML ``[ablation]`` table > defaults."""
    from trainer.config import load_section_settings

    return load_section_settings(AblationSettings, "ablation", toml_path, flags)


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


def sha256(path: Path) -> str:
    from models.card import sha256_file

    return sha256_file(path)


def identity(model: Path) -> str:
    """The model apart from its card: an eval's --write-card rewrites the card inside the ONNX."""
    from models.card import graph_sha256

    return graph_sha256(model) if model.suffix == ".onnx" else sha256(model)


# ------------------------------------------------------------------------------------------ budgets


class Clock:
    """The command's deadline (``--total-budget-s``) and the stop flag set by signals."""

    def __init__(self, total_s: float) -> None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + total_s if total_s else math.inf
        self.stop_requested = False

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


class Job:
    """One crack-train process with a wall-clock budget; over budget it gets SIGTERM, later SIGKILL.

    A training run's ``ablation-state.json`` records the seconds spent (updated while it runs), so a
    resumed run only gets what is left of its budget, and how it stopped once it has.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, budget_s: float,
                 state_path: Path | None = None, spent_s: float = 0.0) -> None:
        self.name, self.argv, self.log_path, self.budget_s = name, argv, log_path, budget_s
        self.state_path, self.spent_s = state_path, spent_s
        self.proc: subprocess.Popen | None = None
        self.started = self.term_at = 0.0
        self.over_budget = False
        self.rc: int | None = None
        self.skip_reason = ""  # why it was never started, when it was not

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
        with open(self.log_path, "ab") as out:
            out.write(f"\n# {datetime.now(timezone.utc).isoformat()} {shlex.join(self.argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        log.info("event=start job=%s budget_s=%.0f spent_before_s=%.0f log=%s", self.name, self.budget_s,
                 self.spent_s, self.log_path)

    def elapsed(self) -> float:
        return time.monotonic() - self.started if self.started else 0.0

    def poll(self) -> bool:
        """True once the process has ended; enforces the budget on the way."""
        assert self.proc is not None
        self.rc = self.proc.poll()
        if self.rc is not None:
            self.save_state("stopped")
            return True
        now = time.monotonic()
        if not self.term_at and self.elapsed() > self.budget_s:
            self.over_budget = True
            self.terminate()
        elif self.term_at and now - self.term_at > GRACE_S:
            log.warning("event=kill job=%s reason='no exit %.0f s after SIGTERM'", self.name, GRACE_S)
            self.proc.kill()
        return False

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None and not self.term_at:
            log.info("event=stop job=%s elapsed_s=%.0f over_budget=%s", self.name, self.elapsed(), self.over_budget)
            self.proc.send_signal(signal.SIGTERM)
            self.term_at = time.monotonic()

    def save_state(self, status: str, **extra: Any) -> None:
        if self.state_path is None:
            return
        old = read_json(self.state_path) or {}
        write_json(self.state_path, {**old, "status": status, "spent_s": round(self.spent_s + self.elapsed(), 1),
                                     "budget_s": round(self.spent_s + self.budget_s, 1), **extra})

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


def run_jobs(jobs: Sequence[Job], limit: int, clock: Clock, progress_every_s: float, stage: str,
             ready=lambda job, done: True, on_done=lambda job: None) -> None:
    """Run ``jobs`` ``limit`` at a time; ``ready(job, finished)`` may hold one back until others end."""
    pending, running, finished = list(jobs), [], []
    last_progress = time.monotonic()
    try:
        while pending or running:
            if clock.stop_requested:
                raise Interrupted(f"stage {stage}")
            for job in list(pending):
                if len(running) >= limit:
                    break
                if ready(job, finished):
                    pending.remove(job)
                    if job.budget_s <= 0:  # given no time: left for on_done to report
                        finished.append(job)
                        on_done(job)
                        continue
                    job.start()
                    running.append(job)
            for job in list(running):
                if job.poll():
                    running.remove(job)
                    finished.append(job)
                    on_done(job)
            if pending and not running and not any(ready(j, finished) for j in pending):
                raise StepFailed(f"stage {stage}: {[j.name for j in pending]} can never start")
            if time.monotonic() - last_progress >= progress_every_s:
                last_progress = time.monotonic()
                for job in running:
                    job.save_state("running")
                    log.info("event=progress stage=%s job=%s elapsed_s=%.0f budget_s=%.0f %s", stage, job.name,
                             job.elapsed(), job.budget_s, run_progress(job))
            time.sleep(0.2)
    finally:
        for job in running:
            job.terminate()
        for job in running:
            try:
                job.proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.wait()
            job.save_state("running")


def run_progress(job: Job) -> str:
    """epochs=N best_val_f1_tol=X from a training run's log.csv (empty for other jobs)."""
    if job.state_path is None:
        return ""
    rows = read_csv(job.state_path.parent / "log.csv")
    if not rows:
        return "epochs=0"
    return (f"epochs={len(rows)} best_val_f1_tol={max(float(r['val_f1_tol']) for r in rows):.4f} "
            f"last_epoch_s={rows[-1].get('seconds')}")


def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


# ------------------------------------------------------------------------------------------- stages


class Ablation:
    def __init__(self, cfg: AblationSettings, clock: Clock) -> None:
        self.cfg, self.clock = cfg, clock
        self.p = Paths(cfg.work)
        self.students = plan_students(cfg)
        self.teacher = teacher_model(cfg)
        self.train_specs = [f"{cfg.cfd}:train", *cfg.extra_data]
        self.stage_s: dict[str, float] = {}
        self.failures: list[str] = []

    # -- command lines
    def common_flags(self) -> list[str]:
        c = self.cfg
        flags = ["--data", *self.train_specs, "--val-fraction", str(c.val_fraction), "--val-seed", str(c.val_seed),
                 "--device", c.device]
        return flags + (["--threads", str(c.threads)] if c.threads else [])

    def train_flags(self, role: str) -> list[str]:
        c = self.cfg
        crop, batch, samples, epochs, extra = (
            (c.teacher_crop, c.teacher_batch, c.teacher_samples, c.teacher_epochs, c.teacher_args) if role == "teacher"
            else (c.student_crop, c.student_batch, c.student_samples, c.student_epochs, c.student_args))
        return [*self.common_flags(), "--val-max-images", str(c.val_max_images), "--val-size", str(c.size),
                "--seed", str(c.seed), "--workers", str(c.workers), "--crop", str(crop), "--batch-size", str(batch),
                "--samples-per-epoch", str(samples), "--epochs", str(epochs), *shlex.split(extra)]

    def argv(self, m: Model) -> list[str]:
        base = [sys.executable, "-m", "trainer.cli"]
        run = ["--run-dir", str(self.p.run(m.name))]
        if m.role == "teacher":
            return [*base, "teacher", *run, "--arch", m.arch, *self.train_flags("teacher")]
        if m.role == "plain":
            return [*base, "student", "--plain", *run, "--arch", m.arch, *self.train_flags("student")]
        return [*base, "student", *run, "--arch", m.arch, "--labels", str(self.p.labels(m.temperature)),
                "--teacher", str(self.p.run("teacher") / "best.pt"), "--kd", m.kd, "--alpha", str(self.cfg.alpha),
                *self.train_flags("student")]

    # -- training runs
    def training_argv(self, m: Model) -> list[str]:
        return self.argv(m) + (["--resume"] if (self.p.run(m.name) / "last.pt").exists() else [])

    def training_job(self, m: Model, requested_s: float, keep_after_s: float) -> Job | None:
        """The job that (re)starts ``m``'s run, or None when the run is already done.

        Its budget is what is left of ``requested_s`` after earlier commands, cut so that
        ``keep_after_s`` of the whole command's time remains.
        """
        run = self.p.run(m.name)
        state_path = run / "ablation-state.json"
        state = read_json(state_path) or {}
        spent = float(state.get("spent_s", 0.0))
        if state.get("status") != "done" and spent >= requested_s and (run / "best.pt").exists():
            # The process ended on its budget but the tool was stopped before recording it.
            write_json(state_path, {**state, "status": "done", "stop": "budget",
                                    "epochs": len(read_csv(run / "log.csv"))})
            state = read_json(state_path)
        if state.get("status") == "done":
            log.info("event=skip job=%s reason=done stop=%s epochs=%s", m.name, state.get("stop"), state.get("epochs"))
            return None
        argv = [] if m.temperature is None and m.role == "kd" else self.training_argv(m)  # best T: decided later
        budget = min(requested_s - spent, self.clock.left() - keep_after_s)
        return Job(m.name, argv, self.p.job_log(m.name), budget, state_path, spent)

    def finish_training(self, m: Model, job: Job) -> None:
        """Record how ``m``'s run stopped; raise when it produced nothing usable."""
        run = self.p.run(m.name)
        rows = read_csv(run / "log.csv")
        epochs_cap = self.cfg.teacher_epochs if m.role == "teacher" else self.cfg.student_epochs
        if job.proc is None:
            stop = "out of time before start"
        elif job.rc == 0:
            stop = "epochs" if len(rows) >= epochs_cap else "early stop"
        elif job.rc == exits.INTERRUPTED and job.over_budget:
            stop = "budget"
        else:
            raise StepFailed(f"{m.name}: `{shlex.join(job.argv[1:])}` exited {job.rc}; log {job.log_path}:\n"
                             f"{job.tail()}")
        if not (run / "best.pt").exists():
            raise StepFailed(f"{m.name}: no epoch finished within its budget of {job.spent_s + job.budget_s:.0f} s "
                             f"(stop: {stop}); raise its budget or lower its samples per epoch; log {job.log_path}")
        job.save_state("done", stop=stop, epochs=len(rows), rc=job.rc)
        log.info("event=done job=%s stop=%s %s", m.name, stop, run_progress(job))

    def stage_teacher(self) -> None:
        c = self.cfg
        waves = math.ceil(len([s for s in self.students if not s.after_kd]) / c.jobs) + any(
            s.after_kd for s in self.students)
        keep = c.labels_reserve_s + waves * c.student_budget_s + c.eval_reserve_s
        job = self.training_job(self.teacher, c.teacher_budget_s, keep)
        if job is None:
            return
        if job.budget_s < MIN_JOB_S:
            raise StepFailed(f"teacher: only {job.budget_s:.0f} s left for it under --total-budget-s "
                             f"{c.total_budget_s:g}; raise it or lower the student budget")
        run_jobs([job], 1, self.clock, c.progress_every_s, "teacher",
                 on_done=lambda j: self.finish_training(self.teacher, j))

    def labels_done(self, t: float, teacher_sha: str) -> bool:
        manifest = read_json(self.p.labels(t) / "manifest.json")
        return bool(manifest) and manifest.get("teacher_sha256") == teacher_sha

    def stage_labels(self) -> None:
        c = self.cfg
        teacher = self.p.run("teacher") / "best.pt"
        teacher_sha = sha256(teacher)
        jobs = []
        for t in c.temperatures:
            if self.labels_done(t, teacher_sha):
                log.info("event=skip job=labels-T%s reason=done", tname(t))
                continue
            argv = [sys.executable, "-m", "trainer.cli", "labels", "--teacher-ckpt", str(teacher), "-T", tname(t),
                    "--out", str(self.p.labels(t)), *self.common_flags()]
            jobs.append(Job(f"labels-T{tname(t)}", argv, self.p.job_log(f"labels-T{tname(t)}"), c.labels_timeout_s))

        def done(job: Job) -> None:
            if job.rc != exits.OK or job.over_budget:
                why = f"took over --labels-timeout-s {c.labels_timeout_s:g}" if job.over_budget else f"exited {job.rc}"
                raise StepFailed(f"{job.name}: {why}; log {job.log_path}:\n{job.tail()}")
            log.info("event=done job=%s", job.name)

        run_jobs(jobs, c.jobs, self.clock, c.progress_every_s, "labels", on_done=done)

    def best_t_by_val(self) -> tuple[float, float] | None:
        """(T, val F1(2px)) of the best standard-KD student, from its run's own validation."""
        scored = []
        for m in self.students:
            if m.kd == "standard":
                meta = read_json(self.p.run(m.name) / "ablation-state.json") or {}
                if meta.get("status") == "done":
                    scored.append((run_best_val(self.p.run(m.name)), m.temperature))
        if not scored:
            return None
        f1, t = max(scored, key=lambda s: (s[0], -s[1]))
        return t, f1

    def resolve_hyper(self) -> None:
        """Give 'hyperthermal at the best T' its temperature once standard KD has finished."""
        for m in self.students:
            if m.after_kd and m.temperature is None:
                best = self.best_t_by_val()
                if best is None:
                    raise StepFailed("hyperthermal KD at the best T: no standard-KD student finished")
                m.temperature = best[0]
                m.label = m.label.replace("best T", f"T={tname(best[0])} (best T by validation)")
                log.info("event=best_t T=%s val_f1_tol=%.4f for=%s", tname(best[0]), best[1], m.name)

    def stage_students(self) -> None:
        c = self.cfg
        jobs: dict[str, Job] = {}
        models = {m.name: m for m in self.students}
        kd_names = {m.name for m in self.students if m.kd == "standard"}
        skipped = []
        for m in self.students:
            job = self.training_job(m, c.student_budget_s, c.eval_reserve_s)
            if job is not None:
                jobs[m.name] = job
            else:
                skipped.append(m.name)
        if any(m.after_kd for m in self.students) and any(m.name in skipped for m in self.students if m.after_kd):
            self.resolve_hyper()

        def ready(job: Job, finished: list[Job]) -> bool:
            if not models[job.name].after_kd:
                return True
            waiting = kd_names & set(jobs) - {j.name for j in finished}
            if waiting:
                return False
            try:
                self.resolve_hyper()
            except StepFailed as e:
                job.skip_reason, job.budget_s = str(e), 0
                self.failures.append(f"{job.name}: {e}")
                return True
            job.argv = self.training_argv(models[job.name])
            # Its budget is decided now, from what is left of the whole command.
            job.budget_s = min(job.budget_s, self.clock.left() - c.eval_reserve_s)
            if job.budget_s < MIN_JOB_S:
                job.budget_s = 0
            return True

        def done(job: Job) -> None:
            m = models[job.name]
            if job.proc is None:
                why = job.skip_reason or "out of time before start"
                log.warning("event=not_trained job=%s reason='%s'", job.name, why)
                job.save_state("not trained", stop=why)
                return
            try:
                self.finish_training(m, job)
            except StepFailed as e:
                # One failed student must not cost the other rows of a one-shot GPU session.
                self.failures.append(f"{m.name}: {e}")
                job.save_state("failed", error=str(e).splitlines()[0])
                log.error("event=failed job=%s %s", m.name, e)

        for job in jobs.values():
            if job.budget_s < MIN_JOB_S and not models[job.name].after_kd:
                log.warning("event=short_budget job=%s budget_s=%.0f", job.name, job.budget_s)
                job.budget_s = 0
        run_jobs(list(jobs.values()), c.jobs, self.clock, c.progress_every_s, "students", ready=ready, on_done=done)

    # -- evaluation (in this process, one model at a time: CPU timings must not overlap)
    def crack_train(self, argv: list[str], what: str) -> str:
        """Run a crack-train command in this process; returns what it printed."""
        from trainer.cli import main

        buf = io.StringIO()
        log.info("event=run cmd='crack-train %s'", shlex.join(argv))
        with contextlib.redirect_stdout(buf):
            rc = main(argv)
        out = buf.getvalue()
        for line in out.splitlines():
            log.info("event=output step=%s %s", what, line)
        if rc != exits.OK:
            raise StepFailed(f"{what}: `crack-train {shlex.join(argv)}` exited {rc}")
        return out

    def trained(self, m: Model) -> bool:
        state = read_json(self.p.run(m.name) / "ablation-state.json") or {}
        return state.get("status") == "done" and (self.p.run(m.name) / "best.pt").exists()

    def export(self, m: Model) -> Path:
        onnx, ckpt = self.p.onnx(m.name), self.p.run(m.name) / "best.pt"
        card = read_json(onnx.with_suffix(".json"))
        if (card and onnx.exists() and card.get("sha256") == sha256(onnx)
                and card.get("training", {}).get("checkpoint_sha256") == sha256(ckpt)):
            log.info("event=skip step=export model=%s reason=done", m.name)
            return onnx
        s = f"{self.cfg.size}x{self.cfg.size}"
        self.crack_train(["export", "--checkpoint", str(ckpt), "--out", str(onnx), "--input-size", s,
                          "--name", f"mcff-{m.name}"], f"export {m.name}")
        return onnx

    def evaluate(self, m: Model, model_path: Path, split: str) -> dict[str, Any]:
        """``crack-train eval`` on ``split``; val picks the threshold, test uses it. Returns the report."""
        c = self.cfg
        out = self.p.eval(m.name, split)
        onnx = model_path.suffix == ".onnx"
        val = read_json(self.p.eval(m.name, "val") / "report.json") if split == "test" else None
        report = read_json(out / "report.json")
        if report and report.get("model_graph_sha256") == identity(model_path) and report.get("images") == self.images(
                split) and (split == "val" or report.get("threshold") == val["threshold"]):
            log.info("event=skip step=eval model=%s split=%s reason=done", m.name, split)
            return report
        argv = ["eval", "--model", str(model_path), "--data", str(c.cfd), "--split", split, "--out", str(out),
                "--size", f"{c.size}x{c.size}", "--val-fraction", str(c.val_fraction), "--val-seed",
                str(c.val_seed), "--device", c.device, "--worst", "2", "--figure-rows", "4"]
        argv += ["--threads", str(c.eval_threads)] if c.eval_threads else []
        if split == "val":
            argv += ["--pick-threshold"]
        elif not onnx:
            argv += ["--threshold", str(val["threshold"])]  # a checkpoint has no card to carry it
        if split == "test" and c.test_max_images:
            argv += ["--max-images", str(c.test_max_images)]
        if onnx:
            argv += ["--write-card"]
        self.crack_train(argv, f"eval {m.name} {split}")
        report = read_json(out / "report.json")
        if split == "test" and report["threshold"] != val["threshold"]:
            raise StepFailed(f"{m.name}: test ran at threshold {report['threshold']}, validation picked "
                             f"{val['threshold']}")
        return report

    def images(self, split: str) -> int:
        """How many images an eval of ``split`` judges (a report with another count is stale)."""
        from trainer.data import list_pairs

        c = self.cfg
        n = len(list_pairs(c.cfd, split, c.val_fraction, c.val_seed))
        return min(n, c.test_max_images) if split == "test" and c.test_max_images else n

    def profile(self, arch: str) -> dict[str, Any]:
        path = self.p.profile(arch, self.cfg.size)
        prof = read_json(path)
        if prof is None:
            out = self.crack_train(["profile", "--arch", arch, "--json", "--size", f"{self.cfg.size}x{self.cfg.size}"],
                                   f"profile {arch}")
            prof = json.loads(out.strip().splitlines()[-1])
            write_json(path, prof)
        return prof

    def bench(self, m: Model, onnx: Path, image: Path) -> dict[str, Any]:
        c = self.cfg
        runs = c.teacher_bench_runs if m.role == "teacher" else c.bench_runs
        path = self.p.bench(m.name)
        old = read_json(path)
        key = {"sha256": sha256(onnx), "runs": runs, "threads": c.bench_threads, "size": c.size}
        if old and all(old.get(k) == v for k, v in key.items()):
            log.info("event=skip step=bench model=%s reason=done", m.name)
            return old
        result = {**key, **time_cpu(onnx, image, c.size, runs, c.bench_warmup, c.bench_threads)}
        write_json(path, result)
        log.info("event=bench model=%s median_ms=%.1f p90_ms=%.1f runs=%d threads=%s", m.name, result["median_ms"],
                 result["p90_ms"], runs, c.bench_threads or "default")
        return result

    def stage_evaluate(self) -> list[dict[str, Any]]:
        from trainer.data import list_pairs

        c = self.cfg
        if c.eval_threads:
            import torch

            torch.set_num_threads(c.eval_threads)  # export's parity check and checkpoint eval run here
        bench_image = list_pairs(c.cfd, "test", c.val_fraction, c.val_seed)[0].image
        rows = []
        for m in [*self.students, self.teacher]:  # the teacher last: it is the slowest, the students matter most
            row = self.row_base(m)
            rows.append(row)
            if not self.trained(m):
                state = read_json(self.p.run(m.name) / "ablation-state.json") or {}
                row["status"] = f"not trained: {state.get('error') or state.get('stop') or 'no run'}"
                continue
            if c.total_budget_s and self.clock.left() < 0:
                row["status"] = "not evaluated: out of time (run the same command again)"
                log.warning("event=not_evaluated model=%s reason=out_of_time", m.name)
                continue
            try:
                row.update(self.measure(m, bench_image))
            except TrainerError as e:
                self.failures.append(f"{m.name}: {e}")
                row["status"] = f"failed: {str(e).splitlines()[0]}"
                log.error("event=failed model=%s %s", m.name, e)
        return [rows[-1], *rows[:-1]]  # the table reads teacher first, as the issue lists it

    def measure(self, m: Model, bench_image: Path) -> dict[str, Any]:
        """Export, threshold on val, test, time and size one trained model; its row's figures."""
        c = self.cfg
        onnx = self.export(m)
        judged = self.p.run(m.name) / "best.pt" if m.role == "teacher" and c.teacher_eval == "checkpoint" else onnx
        val = self.evaluate(m, judged, "val")
        test = self.evaluate(m, judged, "test")
        prof = self.profile(m.arch)
        return {"status": "measured", "judged": str(judged.relative_to(c.work)), "threshold": test["threshold"],
                "threshold_source": val["threshold_source"], "val": {"images": val["images"], **pick(val["metrics"])},
                "test": {"images": test["images"], "mode": test["mode"], "input_size": test["input_size"],
                         "ms_per_image": test["ms_per_image"], **pick(test["metrics"])},
                "cpu": self.bench(m, onnx, bench_image), "onnx_sha256": sha256(onnx),
                "params": prof["params"], "gflops": prof["gflops"]}

    def row_base(self, m: Model) -> dict[str, Any]:
        run = self.p.run(m.name)
        state = read_json(run / "ablation-state.json") or {}
        ck_meta = checkpoint_meta(run / "best.pt")
        return {"name": m.name, "label": m.label, "role": m.role, "arch": m.arch, "kd": m.kd,
                "temperature": m.temperature, "deploy_temperature": ck_meta.get("deploy_temperature"),
                "training": {"stop": state.get("stop"), "epochs": state.get("epochs"), "spent_s": state.get("spent_s"),
                             "budget_s": state.get("budget_s"), "best_epoch": ck_meta.get("epoch"),
                             "best_val_f1_tol": ck_meta.get("val", {}).get("val_f1_tol")}}


def run_best_val(run: Path) -> float:
    rows = read_csv(run / "log.csv")
    return max((float(r["val_f1_tol"]) for r in rows), default=-1.0)


def checkpoint_meta(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    from trainer.checkpoint import read_checkpoint

    return read_checkpoint(path, "checkpoint", needs=()).get("meta", {})


def pick(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"strict": metrics["strict"], "tol2": metrics["tol2"], "counts": metrics.get("counts")}


def time_cpu(onnx: Path, image: Path, size: int, runs: int, warmup: int, threads: int) -> dict[str, Any]:
    """Median ms of one 1x3xSxS frame through the daemon's ONNX Runtime backend, CPU provider only."""
    import onnxruntime as ort

    from edge.backends.base import create_backend
    from models.card import load_card
    from models.preprocess import Preprocessor
    from trainer.data import read_image

    card = load_card(onnx)
    backend = create_backend("onnxruntime", onnx, card, threads=threads, providers=["CPUExecutionProvider"])
    backend.load()
    x = Preprocessor(card, (size, size))(read_image(image))[0].copy()  # the daemon's own frame
    try:
        for _ in range(warmup):
            backend.infer(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            backend.infer(x)
            times.append(1000 * (time.perf_counter() - t0))
        providers = list(backend.providers)
    finally:
        backend.close()
    times.sort()
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(times[min(len(times) - 1,
                                                                                       int(0.9 * len(times)))], 2),
            "min_ms": round(times[0], 2), "warmup": warmup, "input": f"1x3x{size}x{size}", "providers": providers,
            "onnxruntime": ort.__version__, "image": image.name}


# ------------------------------------------------------------------------------------------- report


def host_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(), "host": platform.node()}


def fmt(v: Any, nd: int = 3) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def verdict(rows: list[dict[str, Any]], best_t: tuple[float, float] | None) -> list[str]:
    """Plain sentences on what distillation bought over the plain student, computed from the rows."""
    by = {r["name"]: r for r in rows if r.get("status") == "measured"}
    plain = by.get("plain")
    kd = [r for r in by.values() if r["role"] == "kd"]
    if plain is None or not kd:
        return ["Not enough rows measured to compare distillation with the plain student."]
    lines = []
    pf, pi = plain["test"]["tol2"]["f1"], plain["test"]["strict"]["iou"]
    for r in kd:
        df, di = r["test"]["tol2"]["f1"] - pf, r["test"]["strict"]["iou"] - pi
        lines.append(f"{r['label']}: F1 (2 px) {df:+.3f}, IoU {di:+.3f} against the plain student.")
    better = [r for r in kd if r["test"]["tol2"]["f1"] > pf and r["test"]["strict"]["iou"] > pi]
    if better:
        lines.append(f"Distillation beats the plain student on both test F1 (2 px) and IoU in {len(better)} of "
                     f"{len(kd)} distilled rows.")
    else:
        lines.append(f"Distillation does NOT beat the plain student here: no distilled row has both a higher test "
                     f"F1 (2 px) than {pf:.3f} and a higher IoU than {pi:.3f}.")
    if best_t:
        lines.append(f"Best T by validation (standard KD, validation F1 (2 px) during training): T={tname(best_t[0])} "
                     f"({best_t[1]:.3f}).")
    return lines


def release_candidate(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The student with the best validation F1(2px) (never chosen on test), and its test figures."""
    students = [r for r in rows if r.get("status") == "measured" and r["role"] != "teacher"]
    if not students:
        return None
    r = max(students, key=lambda r: r["val"]["tol2"]["f1"])
    f1, iou = r["test"]["tol2"]["f1"], r["test"]["strict"]["iou"]
    return {"name": r["name"], "chosen_by": "best validation F1 (2 px) among students",
            "val_f1_tol": r["val"]["tol2"]["f1"],
            "test_f1_tol": f1, "test_iou": iou, "meets_targets": f1 >= 0.92 and iou >= 0.50,
            "targets": "F1 (2 px) >= 0.92 and strict IoU >= 0.50 on the CrackForest test split (issue 3)"}


def extra(args: str) -> str:
    return f", `{args}`" if args else ""


def markdown(report: dict[str, Any]) -> str:
    s, rows = report["settings"], report["rows"]
    measured = [r for r in rows if r.get("status") == "measured"]
    n_test = measured[0]["test"]["images"] if measured else "?"
    n_val = measured[0]["val"]["images"] if measured else "?"
    size = s["size"]
    cpu = next((r["cpu"] for r in measured if r["role"] != "teacher"), None) or {}
    out = [f"# {report['title']}", "",
           f"CrackForest test split, {n_test} images, each resized to {size}x{size} and back as the daemon runs it "
           f"(`crack-train eval --mode resize`). One threshold per model, picked on validation ({n_val} images carved "
           f"from CrackForest train, fraction {s['val_fraction']:g}, seed {s['val_seed']}), never on test.", "",
           f"| model | params | GFLOPs | P | R | F1 | IoU | F1 (2 px) | CPU ms | threshold | val F1 (2 px) | epochs |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        if r.get("status") != "measured":
            out.append(f"| {r['label']} | " + " | ".join(["—"] * 11) + f" |")
            continue
        st, tol, tr = r["test"]["strict"], r["test"]["tol2"], r["training"]
        params = f"{r['params'] / 1e6:.2f} M"
        epochs = f"{tr['epochs']} ({tr['stop']})"
        out.append(f"| {r['label']} | {params} | {r['gflops']:.1f} | {fmt(st['precision'])} | {fmt(st['recall'])} | "
                   f"{fmt(st['f1'])} | {fmt(st['iou'])} | {fmt(tol['f1'])} | {r['cpu']['median_ms']:.1f} | "
                   f"{r['threshold']:.2f} | {fmt(r['val']['tol2']['f1'])} | {epochs} |")
    missing = [f"{r['label']} ({r.get('status')})" for r in rows if r.get("status") != "measured"]
    if missing:
        out += ["", "Rows not measured: " + ", ".join(missing) + "."]
    out += ["", "**What distillation bought**", ""]
    out += [f"- {line}" for line in report["verdict"]]
    rc = report.get("release_candidate")
    if rc:
        meets = "meets" if rc["meets_targets"] else "does NOT meet"
        out += [f"- Release candidate, chosen on validation: `{rc['name']}` (val F1 (2 px) {rc['val_f1_tol']:.3f}); "
                f"on test F1 (2 px) {rc['test_f1_tol']:.3f}, IoU {rc['test_iou']:.3f}: it {meets} the targets "
                f"({rc['targets']})."]
    hyper = report.get("hyperthermal", {})
    teacher_judge = ("ONNX file (ONNX Runtime, as the daemon)" if s["teacher_eval"] == "onnx" else
                     f"checkpoint (PyTorch on {report['host']['gpu'] or 'the CPU'})")
    out += ["", "**Columns**", "",
            "- params, GFLOPs: `crack-train profile` of the variant at "
            f"{size}x{size}; GFLOPs = 2 x multiply-adds of one forward pass.",
            "- P, R, F1, IoU: strict pixel precision, recall, F1 and IoU at the threshold, counts summed over the test "
            "set at the original image size against the raw (undilated) masks.",
            "- F1 (2 px): a predicted crack pixel is correct if a ground-truth crack pixel lies within the radius-2 "
            "disc around it, a ground-truth pixel is found if a predicted one lies within its disc; counts summed.",
            f"- CPU ms: median of {s['bench_runs']} timed runs (teacher: {s['teacher_bench_runs']}) after "
            f"{s['bench_warmup']} untimed ones, one 1x3x{size}x{size} frame through the daemon's ONNX Runtime backend "
            f"(CPUExecutionProvider, onnxruntime {cpu.get('onnxruntime', '?')}, threads: "
            f"{s['bench_threads'] or 'ONNX Runtime default'}) on {report['host']['cpu']} "
            f"({report['host']['cpu_count']} logical CPUs).",
            "- threshold: picked on validation by `crack-train eval --split val --pick-threshold` (best F1 (2 px) "
            "over 0.05 ... 0.95).",
            "- val F1 (2 px): that validation figure at that threshold; epochs: epochs trained and why the run "
            "stopped (budget = its wall-clock budget ran out).",
            f"- Hyperthermal KD: {hyper.get('note', '')}.",
            f"- Teacher judged through its {teacher_judge} (same evaluator, resize and threshold rule); its CPU ms "
            "through its ONNX file.",
            f"- Training: {', '.join(s['train_data'])}; seed {s['seed']}; teacher crop {s['teacher_crop']}, batch "
            f"{s['teacher_batch']}, {s['teacher_samples']} crops/epoch, budget {s['teacher_budget_s']:g} s"
            f"{extra(s['teacher_args'])}; students crop {s['student_crop']}, batch {s['student_batch']}, "
            f"{s['student_samples']} crops/epoch, budget {s['student_budget_s']:g} s each, {s['jobs']} at a time"
            f"{extra(s['student_args'])}; KD alpha {s['alpha']:g}; device {report['host']['gpu'] or 'cpu'}.",
            f"- Raw figures: `ablation.json`. Made by `python tools/ablation.py` on {report['created']}.", ""]
    return "\n".join(line for line in out if line is not None)


def write_report(ab: Ablation, rows: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = ab.cfg
    best_t = ab.best_t_by_val()
    hyper = next(m for m in ab.students if m.kd == "hyperthermal")
    if not hyper.after_kd:
        note = (f"at T={cfg.hyper_t}, fixed in advance (the published best) and trained in parallel with the "
                "standard-KD students, before the best T by validation was known")
    elif hyper.temperature is not None:
        note = (f"at T={tname(hyper.temperature)}, the T of the standard-KD student with the best validation "
                "F1 (2 px), trained after them")
    else:
        note = "not run"
    if not hyper.after_kd and best_t and tname(best_t[0]) != cfg.hyper_t:
        note += f"; validation later picked T={tname(best_t[0])}, so this row is not at the best T"
    report = {"version": 1, "title": cfg.title, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "host": host_info(), "settings": {**json.loads(cfg.model_dump_json()), "train_data": ab.train_specs},
              "stage_seconds": ab.stage_s, "best_t_by_val": list(best_t) if best_t else None,
              "hyperthermal": {"temperature": hyper.temperature, "note": note}, "rows": rows,
              "verdict": verdict(rows, best_t), "release_candidate": release_candidate(rows),
              "failures": ab.failures}
    write_json(cfg.work / "ablation.json", report)
    (cfg.work / "ablation.md").write_text(markdown(report))
    log.info("event=report json=%s md=%s", cfg.work / "ablation.json", cfg.work / "ablation.md")
    return report


# ------------------------------------------------------------------------------------------ collect


def collect_groups(ab: Ablation, report: dict[str, Any]) -> list[tuple[str, list[Path], bool]]:
    """(name, files, required) to take away; paths under the work folder."""
    w, p = ab.cfg.work, ab.p
    small = [w / "ablation.log", w / "settings.json", *sorted((w / "jobs").glob("*.log")),
             *sorted((w / "bench").glob("*.json")),
             *sorted((w / "profile").glob("*.json")), *sorted((w / "onnx").glob("*.json")),
             *sorted((w / "labels").glob("*/manifest.json")), *sorted((w / "eval").glob("*/report.json")),
             # One picture per model (photo | ground truth | prediction on test); the overlays stay behind.
             *sorted((w / "eval").glob("*-test/figure.png")),
             *[f for r in sorted((w / "runs").glob("*")) for f in sorted(r.glob("*"))
               if f.suffix in (".csv", ".png", ".json")]]
    groups: list[tuple[str, list[Path], bool]] = [("logs", [f for f in small if f.is_file()], True)]
    for r in report["rows"]:
        if r["role"] != "teacher" and r.get("status") == "measured":
            files = [p.run(r["name"]) / "best.pt", p.onnx(r["name"]), p.onnx(r["name"]).with_suffix(".json")]
            groups.append((f"student-{r['name']}", files, True))
    # Soft labels, best T first, only where they fit: they let a student be retrained without the teacher.
    ts = sorted(ab.cfg.temperatures, key=lambda t: (report["best_t_by_val"] is None
                                                    or t != report["best_t_by_val"][0], t))
    for t in ts:
        d = p.labels(t)
        if (d / "manifest.json").exists():
            groups.append((f"labels-T{tname(t)}", sorted(f for f in d.rglob("*") if f.is_file()), False))
    return groups


def tar_estimate(files: Sequence[Path]) -> int:
    """An upper bound on the .tar.gz size: tar blocks and headers; PNG and weights barely compress."""
    return sum(512 + (f.stat().st_size + 511) // 512 * 512 for f in files) + 10240


def collect(ab: Ablation, report: dict[str, Any], dest: Path) -> dict[str, Any]:
    """Pack the groups into at most ``collect_max_files`` files of at most ``collect_max_mib`` each."""
    cfg = ab.cfg
    limit = int(cfg.collect_max_mib * 2**20)
    slots = cfg.collect_max_files - 2  # ablation.json and ablation.md travel as plain files
    bins: list[dict[str, Any]] = []
    skipped = []
    groups = collect_groups(ab, report)
    required = sorted([g for g in groups if g[2]], key=lambda g: -tar_estimate(g[1]))
    total_limit = int(cfg.collect_max_total_mib * 2**20)
    for name, files, req in required + [g for g in groups if not g[2]]:
        size = tar_estimate(files)
        target = next((b for b in bins if b["size"] + size <= limit), None)
        if sum(b["size"] for b in bins) + size > total_limit:
            target = None
        elif target is None and len(bins) < slots and size <= limit:
            target = {"groups": [], "files": [], "size": 0}
            bins.append(target)
        if target is None:
            why = (f"{size / 2**20:.1f} MiB, no room within {cfg.collect_max_files} files of "
                   f"{cfg.collect_max_mib:g} MiB, {cfg.collect_max_total_mib:g} MiB in all")
            if req:
                raise StepFailed(f"collect: {name} ({why}); raise --collect-max-files or lower what is trained")
            skipped.append({"group": name, "reason": why})
            log.warning("event=collect_skip group=%s reason='%s'", name, why)
            continue
        target["groups"].append(name)
        target["files"] += files
        target["size"] += size
    dest.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, b in enumerate(bins, 1):
        fname = f"{b['groups'][0]}.tar.gz" if len(b["groups"]) == 1 else f"bundle-{i}.tar.gz"
        path = dest / fname
        with tarfile.open(path, "w:gz", compresslevel=6) as tar:
            for f in b["files"]:
                tar.add(f, arcname=str(f.relative_to(cfg.work)), recursive=False)
        size = path.stat().st_size
        if size > limit:
            raise StepFailed(f"collect: {path} is {size / 2**20:.1f} MiB > {cfg.collect_max_mib:g} MiB")
        written[fname] = {"groups": b["groups"], "bytes": size}
        log.info("event=collect file=%s groups=%s mib=%.1f", path, ",".join(b["groups"]), size / 2**20)
    info = {"folder": str(dest), "files": written, "skipped": skipped,
            "unpack": "for f in *.tar.gz; do tar xzf \"$f\" -C WORK; done  (paths are relative to the work folder)"}
    report["collected"] = info
    write_json(cfg.work / "ablation.json", report)
    for name in ("ablation.json", "ablation.md"):
        (dest / name).write_bytes((cfg.work / name).read_bytes())
    return info


# ----------------------------------------------------------------------------------------- running


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


def run(cfg: AblationSettings) -> dict[str, Any]:
    if not cfg.cfd.is_dir():
        raise MissingInput(f"{cfg.cfd}: CrackForest folder not found (--cfd)")
    from trainer.data import DataSpec, list_pairs

    for spec in [f"{cfg.cfd}:train", *cfg.extra_data]:
        s = DataSpec.parse(spec)
        if not s.root.is_dir():
            raise MissingInput(f"{s.root}: training set folder not found (--extra-data {spec})")
    list_pairs(cfg.cfd, "test")  # fail now, not after training, if the test split is missing
    cfg.work.mkdir(parents=True, exist_ok=True)
    check_work(cfg)
    clock = Clock(cfg.total_budget_s)

    def on_signal(signum, frame):
        clock.stop_requested = True
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_signal)
    ab = Ablation(cfg, clock)
    log.info("event=plan work=%s train=%s rows=%s jobs=%d total_budget_s=%g", cfg.work, ab.train_specs,
             ["teacher"] + [m.name for m in ab.students], cfg.jobs, cfg.total_budget_s)
    try:
        rows: list[dict[str, Any]] = []
        for stage, fn in (("teacher", ab.stage_teacher), ("labels", ab.stage_labels),
                          ("students", ab.stage_students), ("evaluate", ab.stage_evaluate)):
            t0 = time.monotonic()
            log.info("event=stage_start stage=%s elapsed_s=%.0f", stage, clock.elapsed())
            result = fn()
            ab.stage_s[stage] = round(time.monotonic() - t0, 1)
            log.info("event=stage_done stage=%s seconds=%.0f", stage, ab.stage_s[stage])
            if stage == "evaluate":
                rows = result
        report = write_report(ab, rows)
        if cfg.collect is not None:
            collect(ab, report, cfg.collect)
        log.info("event=done elapsed_s=%.0f failed=%d", clock.elapsed(), len(ab.failures))
        if ab.failures:
            raise StepFailed(f"{len(ab.failures)} row(s) failed; the others are in {cfg.work / 'ablation.md'}:\n"
                             + "\n".join(ab.failures))
        return report
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tools/ablation.py", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="TOML file with an [ablation] table of these settings")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    for name, f in AblationSettings.model_fields.items():
        ann = f.annotation
        kw: dict[str, Any] = {"default": None, "help": f.description, "dest": name}
        if ann is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(ann) is list:
            kw["nargs"] = "+"
        elif typing.get_origin(ann) is Literal:
            kw["choices"] = typing.get_args(ann)
        ap.add_argument("--" + name.replace("_", "-"), **kw)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        cfg = load_settings(ns.config, **{k: getattr(ns, k) for k in AblationSettings.model_fields})
    except TrainerError as e:
        print(f"ablation: {e}", file=sys.stderr)
        return e.exit_code
    cfg.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", datefmt="%H:%M:%S")
    handler = logging.FileHandler(cfg.work / "ablation.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    try:
        run(cfg)
        return exits.OK
    except TrainerError as e:
        log.error("event=failed exit=%d %s", e.exit_code, e)
        print(f"ablation: {e}", file=sys.stderr)
        return e.exit_code
    except (Interrupted, KeyboardInterrupt) as e:
        print(f"ablation: interrupted ({e}); run the same command again to resume", file=sys.stderr)
        return exits.INTERRUPTED
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


if __name__ == "__main__":
    sys.exit(main())
