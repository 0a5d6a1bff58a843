"""A budgeted job scheduler: processes run N at a time, each stopped by SIGTERM when its time is up.

A job is any command line; the ablation's jobs are ``python -m trainer.ablation.stages SPEC``,
which runs one trainer function (teacher, student, labels) in its own process, so one run's
budget, crash or memory never costs another row.  A training run records the seconds it spent
(``ablation-state.json``), so a resumed ablation gives it only what is left of its budget.
"""
from __future__ import annotations

import logging
import math
import os
import shlex
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from trainer.ablation.plan import Interrupted, StepFailed, read_csv, read_json, write_json

log = logging.getLogger("ablation")

ROOT = Path(__file__).resolve().parents[2]  # the repository: children import this tree's trainer
GRACE_S = 60.0  # after SIGTERM, how long a run may take to stop before it is killed
MIN_JOB_S = 10.0  # a training run given less than this is not started


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
            # Its own process: a budget is enforced by a signal, and a crash or OOM costs one row only.
            self.proc = subprocess.Popen(self.argv, env=env, stdout=out, stderr=subprocess.STDOUT)
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
             ready: Callable[[Job, list[Job]], bool] = lambda job, done: True,
             on_done: Callable[[Job], None] = lambda job: None) -> None:
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
