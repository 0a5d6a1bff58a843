"""`crack-train ablation`: teacher, soft labels, students, judged side by side, in one command.

    crack-train ablation --cfd .data/crackforest --extra-data .data/crack500-crops:train@0.5 \\
        --work runs/ablation --collect "$OUT" --total-budget-s 560

Stages (:mod:`trainer.ablation.stages`), each skipped when its outputs already exist, so running
the same command again resumes where it stopped:

1. **teacher** for at most ``--teacher-budget-s`` seconds of wall clock (then SIGTERM: the run
   keeps its last finished epoch and ``best.pt``).
2. **labels** at every ``--temperatures`` T, from one teacher pass in one process.
3. **students**, up to ``--jobs`` at a time, each for at most ``--student-budget-s``: the plain
   student (no teacher), standard KD at every T, hyperthermal KD at ``--hyper-t`` (a number: run in
   parallel with the others; ``best``: after them, at the T whose standard-KD student scored best on
   validation).
4. **evaluate**, one model after another in this process: export (ONNX + card), eval on val with the
   threshold picked there, eval on test at that threshold (resized to ``--size`` and back, as the
   daemon runs them), params and GFLOPs, and the median CPU time of ONNX Runtime on one frame.
5. **report** (:mod:`trainer.ablation.report`): ``ablation.json`` and ``ablation.md`` in ``--work``;
   with ``--collect DIR``, the files worth keeping packed into at most ``--collect-max-files`` files.

Settings and layout: :mod:`trainer.ablation.plan`; the budgeted scheduler: :mod:`trainer.ablation.jobs`.
Exit status: 0 done, 2 usage, 65 bad data, 66 missing input, 70 a step failed, 78 bad setting,
130 interrupted (run the same command again to resume).
"""
from __future__ import annotations

import logging
import signal
import time
from typing import Any

from trainer.ablation.jobs import Clock
from trainer.ablation.plan import AblationSettings, Interrupted, StepFailed, check_work, load_settings
from trainer.ablation.report import collect, write_report
from trainer.errors import MissingInput

__all__ = ["AblationSettings", "Interrupted", "StepFailed", "load_settings", "run"]

log = logging.getLogger("ablation")


def run(cfg: AblationSettings) -> dict[str, Any]:
    """Every stage, then the report (and ``collect``); StepFailed when a row failed, after the others."""
    from trainer.ablation.stages import Ablation  # here: a job's process runs that module as __main__

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
