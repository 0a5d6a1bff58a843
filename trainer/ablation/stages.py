"""The ablation's stages, in order: teacher, soft labels, students, then evaluation and timing.

Training runs (teacher, students) and soft labels each run in a process of their own, scheduled
with budgets by :mod:`trainer.ablation.jobs`; such a process is ``python -m
trainer.ablation.stages SPEC.json``, which calls the trainer function itself
(:func:`trainer.teacher.train_teacher`, :func:`trainer.student.train_distilled_student`, ...).
Evaluation calls :func:`trainer.export.export`, :func:`trainer.evaluate.run_eval` and
:func:`trainer.profile.profile` in this process, one model at a time, so CPU timings never
overlap.  Every step is skipped when its outputs already exist, so the same command resumes.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from common import exits
from trainer.ablation.jobs import MIN_JOB_S, Clock, Job, run_jobs, run_progress
from trainer.ablation.plan import (AblationSettings, Model, Paths, StepFailed, identity, plan_students, read_csv,
                                   read_json, run_best_val, sha256, teacher_model, tname, write_json)
from trainer.errors import TrainerError

log = logging.getLogger("ablation")


class Ablation:
    def __init__(self, cfg: AblationSettings, clock: Clock) -> None:
        self.cfg, self.clock = cfg, clock
        self.p = Paths(cfg.work)
        self.students = plan_students(cfg)
        self.teacher = teacher_model(cfg)
        self.train_specs = [f"{cfg.cfd}:train", *cfg.extra_data]
        self.stage_s: dict[str, float] = {}
        self.failures: list[str] = []

    # -- what each training process is given
    def common_settings(self) -> dict[str, Any]:
        c = self.cfg
        out: dict[str, Any] = {"data": list(self.train_specs), "val_fraction": c.val_fraction, "val_seed": c.val_seed,
                               "device": c.device}
        return {**out, "threads": c.threads} if c.threads else out

    def train_settings(self, m: Model) -> dict[str, Any]:
        """The TrainSettings fields of ``m``'s run (validated, with CRACK_TRAIN_* applied, before it starts)."""
        c = self.cfg
        role = "teacher" if m.role == "teacher" else "student"
        crop, batch, samples, epochs = (
            (c.teacher_crop, c.teacher_batch, c.teacher_samples, c.teacher_epochs) if role == "teacher"
            else (c.student_crop, c.student_batch, c.student_samples, c.student_epochs))
        fields = {**self.common_settings(), "val_max_images": c.val_max_images, "val_size": c.size, "seed": c.seed,
                  "workers": c.workers, "crop": crop, "batch_size": batch, "samples_per_epoch": samples,
                  "epochs": epochs, **c.train_overrides(role),
                  "run_dir": self.p.run(m.name), "arch": m.arch, "resume": (self.p.run(m.name) / "last.pt").exists()}
        if m.role == "kd":
            fields.update(labels=self.p.labels(m.temperature), teacher=self.p.run("teacher") / "best.pt", kd=m.kd,
                          alpha=c.alpha)
        return fields

    def step_argv(self, name: str, step: str, settings: dict[str, Any], **extra: Any) -> list[str]:
        """Validate ``settings`` here (a bad one fails now, named) and write the job's spec file."""
        from trainer.config import load_settings

        cfg = load_settings(None, **settings)
        spec = self.p.job_spec(name)
        write_json(spec, {"step": step, "settings": json.loads(cfg.model_dump_json()),
                          **{k: str(v) if isinstance(v, Path) else v for k, v in extra.items()}})
        return [sys.executable, "-m", "trainer.ablation.stages", str(spec)]

    def training_argv(self, m: Model) -> list[str]:
        return self.step_argv(m.name, "teacher" if m.role == "teacher" else m.role, self.train_settings(m))

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
            raise StepFailed(f"{m.name}: its training process exited {job.rc}; log {job.log_path}:\n{job.tail()}")
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
        """Every missing temperature from one teacher pass (logits do not depend on T), in one job."""
        c = self.cfg
        teacher = self.p.run("teacher") / "best.pt"
        teacher_sha = sha256(teacher)
        targets = {}
        for t in c.temperatures:
            if self.labels_done(t, teacher_sha):
                log.info("event=skip job=labels-T%s reason=done", tname(t))
            else:
                targets[repr(float(t))] = str(self.p.labels(t))
        if not targets:
            return
        name = "labels-" + "-".join(f"T{tname(float(t))}" for t in targets)
        argv = self.step_argv(name, "labels", self.common_settings(), teacher_ckpt=teacher, targets=targets)

        def done(job: Job) -> None:
            if job.rc != exits.OK or job.over_budget:
                why = f"took over --labels-timeout-s {c.labels_timeout_s:g}" if job.over_budget else f"exited {job.rc}"
                raise StepFailed(f"{job.name}: {why}; log {job.log_path}:\n{job.tail()}")
            log.info("event=done job=%s", job.name)

        run_jobs([Job(name, argv, self.p.job_log(name), c.labels_timeout_s)], 1, self.clock, c.progress_every_s,
                 "labels", on_done=done)

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
    def trained(self, m: Model) -> bool:
        state = read_json(self.p.run(m.name) / "ablation-state.json") or {}
        return state.get("status") == "done" and (self.p.run(m.name) / "best.pt").exists()

    def export(self, m: Model) -> Path:
        from trainer.export import export

        onnx, ckpt = self.p.onnx(m.name), self.p.run(m.name) / "best.pt"
        card = read_json(onnx.with_suffix(".json"))
        if (card and onnx.exists() and card.get("sha256") == sha256(onnx)
                and card.get("training", {}).get("checkpoint_sha256") == sha256(ckpt)):
            log.info("event=skip step=export model=%s reason=done", m.name)
            return onnx
        log.info("event=export model=%s onnx=%s", m.name, onnx)
        card = export(ckpt, onnx, name=f"mcff-{m.name}", input_size=(self.cfg.size, self.cfg.size))
        log.info("event=exported model=%s params=%s gflops=%s parity_max_abs_diff=%s", m.name, card["params"],
                 card["gflops"], card.get("parity_max_abs_diff"))
        return onnx

    def evaluate(self, m: Model, model_path: Path, split: str) -> dict[str, Any]:
        """``run_eval`` on ``split``; val picks the threshold, test uses it. Returns the report."""
        from trainer.evaluate import run_eval
        from trainer.loop import pick_device

        c = self.cfg
        out = self.p.eval(m.name, split)
        onnx = model_path.suffix == ".onnx"
        val = read_json(self.p.eval(m.name, "val") / "report.json") if split == "test" else None
        report = read_json(out / "report.json")
        if report and report.get("model_graph_sha256") == identity(model_path) and report.get("images") == self.images(
                split) and (split == "val" or report.get("threshold") == val["threshold"]):
            log.info("event=skip step=eval model=%s split=%s reason=done", m.name, split)
            return report
        log.info("event=eval model=%s split=%s judged=%s", m.name, split, model_path)
        # On test an ONNX file carries the validation threshold in its card; a checkpoint has no card.
        threshold = val["threshold"] if split == "test" and not onnx else None
        report = run_eval(model_path, c.cfd, split, out, mode="resize", threshold=threshold,
                          pick_threshold=split == "val", val_fraction=c.val_fraction, val_seed=c.val_seed,
                          max_images=c.test_max_images if split == "test" else 0, worst=2, figure_rows=4,
                          device=pick_device(c.device), threads=c.eval_threads or None, write_card=onnx,
                          size=(c.size, c.size))
        log.info("event=evaluated model=%s split=%s images=%s threshold=%.2f f1_tol=%.4f", m.name, split,
                 report["images"], report["threshold"], report["metrics"]["tol2"]["f1"])
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
            from trainer.profile import profile

            prof = profile(arch, (self.cfg.size, self.cfg.size))
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


def step_main(argv: Sequence[str]) -> int:
    """One job's process: the trainer function its spec names, with the settings the parent validated."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout)
    from trainer.config import TrainSettings
    from trainer.loop import Interrupted as Stopped

    spec = json.loads(Path(argv[0]).read_text())
    cfg = TrainSettings.model_validate(spec["settings"])
    step = spec["step"]
    try:
        if step == "labels":
            from trainer.labels import generate_label_sets
            from trainer.loop import pick_device
            from trainer.sets import train_pair_sets

            if cfg.threads:
                import torch

                torch.set_num_threads(cfg.threads)
            pairs = [p for pairs, _ in train_pair_sets(cfg) for p in pairs]
            targets = {float(t): Path(out) for t, out in spec["targets"].items()}
            paths = generate_label_sets(spec["teacher_ckpt"], pairs, targets, pick_device(cfg.device))
            print(f"{len(pairs)} images labelled at T={', '.join(tname(t) for t in targets)}: "
                  f"{', '.join(map(str, paths))}", flush=True)
            return exits.OK
        from trainer.student import train_distilled_student, train_plain_student
        from trainer.teacher import train_teacher

        train = {"teacher": train_teacher, "plain": train_plain_student, "kd": train_distilled_student}[step]
        r = train(cfg)
        print(f"best epoch {r.best_epoch}: val F1(2px) {r.best_val_f1_tol:.4f}; checkpoint {r.run_dir / 'best.pt'}",
              flush=True)
        return exits.OK
    except TrainerError as e:
        print(f"{step}: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except (Stopped, KeyboardInterrupt):
        print(f"{step}: stopped; its last finished epoch is kept", file=sys.stderr, flush=True)
        return exits.INTERRUPTED


if __name__ == "__main__":
    sys.exit(step_main(sys.argv[1:]))
