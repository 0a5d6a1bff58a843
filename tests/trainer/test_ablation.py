"""`crack-train ablation` at toy scale: the whole process tree on a tiny synthetic set, every artefact re-read.

The real run (33 M-parameter teacher, 1.18 M students, 448x448, minutes per model) belongs on a GPU.
Here teacher and students are the small registered ``student-mcld`` variant (exporting the plain
student costs seconds of CPU per file), crops are 32x32, one epoch of four samples per run, two
temperatures, three test images and two training processes at a time: the orchestration, budgets,
resume, report and collection are exercised for real in about a minute.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from trainer.ablation import jobs
from trainer.cli import main

REPO = Path(__file__).resolve().parents[2]
ROWS = ["teacher", "plain", "kd-T5", "kd-T10", "hyper-best"]
GRID = {round(t, 2) for t in np.arange(0.05, 0.96, 0.05)}


def toy_args(data: Path, work: Path, collect: Path) -> list[str]:
    return ["--cfd", str(data), "--work", str(work), "--collect", str(collect), "--temperatures", "5", "10",
            "--hyper-t", "best", "--jobs", "2", "--device", "cpu", "--threads", "1", "--val-fraction", "0.34",
            "--val-max-images", "2", "--size", "32", "--teacher-arch", "student-mcld", "--student-arch", "student-mcld",
            "--teacher-args=--loss asymmetric", "--teacher-crop", "32",
            "--teacher-batch", "2", "--teacher-samples", "4", "--teacher-epochs", "1", "--student-crop", "32",
            "--student-batch", "2", "--student-samples", "4", "--student-epochs", "1", "--bench-runs", "3",
            "--teacher-bench-runs", "2", "--bench-warmup", "1", "--bench-threads", "1", "--eval-threads", "1",
            "--progress-every-s", "5", "--title", "Toy smoke run (CPU, 32x32, one epoch) - not a result"]


def run_tool(args: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRACK_TRAIN_", "CRACK_ABLATION_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "trainer.cli", "ablation", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def toy(tmp_path_factory, make_dataset):
    root = tmp_path_factory.mktemp("ablation")
    names = [f"{i:03d}" for i in range(9)]
    data = make_dataset(root / "toy-cfd", n=9, size=(64, 96), split={"train": names[:6], "test": names[6:]})
    work, collect = root / "work", root / "collect"
    args = toy_args(data, work, collect)
    proc = run_tool(args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"data": data, "work": work, "collect": collect, "args": args, "log": proc.stderr,
            "report": json.loads((work / "ablation.json").read_text())}


@pytest.mark.timeout(420)
def test_every_row_is_trained_judged_and_reported(toy):
    work, report = toy["work"], toy["report"]
    rows = {r["name"]: r for r in report["rows"]}
    assert [r["name"] for r in report["rows"]] == ROWS
    for name, r in rows.items():
        assert r["status"] == "measured", (name, r)
        assert r["test"]["images"] == 3 and r["val"]["images"] == 2
        for block in (r["test"]["strict"], r["test"]["tol2"], r["val"]["tol2"]):
            assert all(0.0 <= v <= 1.0 for v in block.values()), (name, block)
        assert r["threshold"] in GRID and r["cpu"]["median_ms"] > 0 and r["training"]["epochs"] == 1
        # Each figure is the one its own eval report holds: the threshold came from validation.
        val = json.loads((work / "eval" / f"{name}-val" / "report.json").read_text())
        test = json.loads((work / "eval" / f"{name}-test" / "report.json").read_text())
        assert val["threshold_source"].startswith("picked on val") and test["threshold_source"] == "card"
        assert test["threshold"] == val["threshold"] == r["threshold"]
        assert test["metrics"]["tol2"]["f1"] == r["test"]["tol2"]["f1"]
        assert test["metrics"]["strict"]["iou"] == r["test"]["strict"]["iou"]
        assert test["split"] == "test" and test["mode"] == "resize" and test["input_size"] == [32, 32]
    from trainer.profile import profile

    assert rows["teacher"]["arch"] == rows["plain"]["arch"] == "student-mcld"
    teacher_cfg = json.loads((work / "runs" / "teacher" / "config.json").read_text())["settings"]
    assert teacher_cfg["loss"] == "asymmetric" and rows["teacher"]["test"] != rows["plain"]["test"]
    assert rows["plain"]["params"] == profile("student-mcld")["params"]
    assert rows["plain"]["gflops"] == profile("student-mcld", (32, 32))["gflops"]
    # Hyperthermal KD ran at the T whose standard-KD student validated best during training.
    best = max((5.0, 10.0), key=lambda t: max(float(line.split(",")[header_index(work, f"kd-T{t:g}")])
                                               for line in log_lines(work, f"kd-T{t:g}")))
    assert report["best_t_by_val"][0] == best == rows["hyper-best"]["temperature"]
    assert rows["hyper-best"]["kd"] == "hyperthermal" and rows["hyper-best"]["deploy_temperature"] == best
    assert rows["kd-T5"]["deploy_temperature"] == 1.0
    assert report["release_candidate"]["name"] == max(
        (r for r in report["rows"] if r["role"] != "teacher"), key=lambda r: r["val"]["tol2"]["f1"])["name"]


def log_lines(work: Path, name: str) -> list[str]:
    return (work / "runs" / name / "log.csv").read_text().splitlines()[1:]


def header_index(work: Path, name: str) -> int:
    return (work / "runs" / name / "log.csv").read_text().splitlines()[0].split(",").index("val_f1_tol")


@pytest.mark.timeout(420)
def test_markdown_table_has_every_row_and_column(toy):
    md = (toy["work"] / "ablation.md").read_text()
    assert md.startswith("# Toy smoke run")
    table = [line for line in md.splitlines() if line.startswith("| ")]
    header, body = table[0], table[1:]
    for col in ("params", "GFLOPs", "P", "R", "F1", "IoU", "F1 (2 px)", "CPU ms"):
        assert f"| {col} |" in header
    assert len(body) == len(ROWS)
    for row, line in zip(toy["report"]["rows"], body):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["label"] and len(cells) == len(header.strip("|").split("|"))
        assert float(cells[7]) == pytest.approx(row["test"]["tol2"]["f1"], abs=5e-4)
        assert float(cells[8]) == pytest.approx(row["cpu"]["median_ms"], abs=0.051)
    assert "T=10, fixed in advance" not in md and "best validation F1 (2 px), trained after them" in md


@pytest.mark.timeout(420)
def test_collected_files_fit_the_limits_and_unpack_into_the_work_layout(toy, tmp_path):
    from edge.backends.base import create_backend
    from models.card import load_card, sha256_file
    collect, work = toy["collect"], toy["work"]
    files = sorted(p.name for p in collect.iterdir())
    assert len(files) <= 8 and {"ablation.json", "ablation.md"} <= set(files)
    assert all((collect / f).stat().st_size <= 15.5 * 2**20 for f in files)
    assert (collect / "ablation.md").read_text() == (work / "ablation.md").read_text()
    listed = json.loads((collect / "ablation.json").read_text())["collected"]
    assert set(listed["files"]) == {f for f in files if f.endswith(".tar.gz")}
    for f in listed["files"]:
        with tarfile.open(collect / f) as tar:
            tar.extractall(tmp_path, filter="data")
    for name in ROWS[1:]:
        for rel in (f"runs/{name}/best.pt", f"onnx/{name}.onnx", f"onnx/{name}.json", f"runs/{name}/log.csv"):
            assert sha256_file(tmp_path / rel) == sha256_file(work / rel), rel
    assert (tmp_path / "runs/teacher/log.csv").exists() and not (tmp_path / "runs/teacher/best.pt").exists()
    assert (tmp_path / "labels/T5/manifest.json").exists() and (tmp_path / "ablation.log").exists()
    for name in ROWS:
        assert (tmp_path / f"eval/{name}-val/report.json").exists()
        assert (tmp_path / f"eval/{name}-test/figure.png").exists()
    assert not list(tmp_path.glob("eval/*/worst_*.png"))
    assert sum((collect / f).stat().st_size for f in files) <= 60 * 2**20
    # A collected student runs through the daemon's backend and reproduces its row with crack-train eval.
    onnx = tmp_path / "onnx" / "kd-T10.onnx"
    backend = create_backend("onnxruntime", onnx, load_card(onnx), providers=["CPUExecutionProvider"])
    backend.load()
    out = backend.infer(np.zeros((1, 3, 32, 48), np.float32))
    assert out.shape == (1, 1, 32, 48) and 0.0 <= out.min() and out.max() <= 1.0
    assert main(["eval", "--model", str(onnx), "--data", str(toy["data"]), "--split", "test",
                 "--out", str(tmp_path / "again"), "--threads", "2"]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    row = next(r for r in toy["report"]["rows"] if r["name"] == "kd-T10")
    assert again["metrics"]["tol2"]["f1"] == row["test"]["tol2"]["f1"] and again["threshold"] == row["threshold"]


@pytest.mark.timeout(420)
def test_the_same_command_again_resumes_and_redoes_nothing(toy):
    work = toy["work"]
    watched = [work / "runs" / n / "best.pt" for n in ROWS] + [work / "onnx" / f"{n}.onnx" for n in ROWS] + [
        work / "eval" / f"{n}-test" / "report.json" for n in ROWS] + [work / "labels" / "T5" / "manifest.json"]
    before = {p: p.stat().st_mtime_ns for p in watched}
    proc = run_tool(toy["args"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "event=start job=" not in proc.stderr and "event=export model=" not in proc.stderr
    assert "event=eval model=" not in proc.stderr
    for step in ("job=teacher", "job=labels-T5", "job=kd-T10", "job=hyper-best", "step=export model=plain",
                 "step=eval model=teacher split=test", "step=bench model=kd-T5"):
        assert f"event=skip {step}" in proc.stderr, step
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    again = json.loads((work / "ablation.json").read_text())
    assert [r["test"] for r in again["rows"]] == [r["test"] for r in toy["report"]["rows"]]


@pytest.mark.timeout(420)
def test_refusals_name_the_setting_and_exit_with_its_status(toy, tmp_path, capsys, monkeypatch):
    base = toy_args(toy["data"], tmp_path / "w", tmp_path / "c")
    cases = [
        (["--student-args=--data elsewhere"], 78, "--data is set by the ablation itself"),
        (["--hyper-t", "7"], 78, "hyper_t 7: not among temperatures"),
        (["--size", "30"], 78, "size 30 must be a multiple of 4"),
        (["--cfd", str(tmp_path / "nowhere")], 66, "nowhere: CrackForest folder not found"),
        (["--work", str(toy["work"]), "--temperatures", "5", "15"], 78, "temperatures: [5.0, 10.0] -> [5.0, 15.0]"),
        (["--teacher-args=--los asymmetric"], 78, "--los asymmetric: not a crack-train training flag"),
    ]
    for extra, status, message in cases:
        assert main(["ablation", *base, *extra]) == status, extra
        assert message in capsys.readouterr().err, extra
    monkeypatch.setenv("CRACK_ABLATION_STUDENT_BUDGET", "5")  # the setting is student_budget_s
    assert main(["ablation", *base]) == 78
    assert "env CRACK_ABLATION_STUDENT_BUDGET: unknown setting" in capsys.readouterr().err


@pytest.mark.timeout(420)
def test_a_failed_student_is_reported_and_the_other_rows_still_come_back(toy, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(toy["work"], work)
    # kd-T10 has to train again and its checkpoint is broken: that run fails, nothing else may.
    (work / "runs" / "kd-T10" / "ablation-state.json").unlink()
    (work / "runs" / "kd-T10" / "last.pt").write_bytes(b"not a checkpoint")
    args = toy_args(toy["data"], work, tmp_path / "collect")
    proc = run_tool(args)
    assert proc.returncode == 70, proc.stderr[-3000:]
    assert "1 row(s) failed" in proc.stderr and "kd-T10" in proc.stderr and "jobs/kd-T10.log" in proc.stderr
    report = json.loads((work / "ablation.json").read_text())
    status = {r["name"]: r["status"] for r in report["rows"]}
    assert status.pop("kd-T10").startswith("not trained: kd-T10:")
    assert set(status.values()) == {"measured"}
    assert len(report["failures"]) == 1 and (tmp_path / "collect" / "ablation.md").exists()
    assert "Rows not measured: " in (work / "ablation.md").read_text()


def test_a_run_over_its_budget_gets_sigterm_and_its_time_is_recorded(tmp_path):
    # A stand-in for crack-train with the same contract: SIGTERM -> exit 130 after cleaning up.
    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(130))\n"
             "print('started', flush=True)\n"
             "time.sleep(60)\n")
    state = tmp_path / "run" / "ablation-state.json"
    job = jobs.Job("sleeper", [sys.executable, "-c", child], tmp_path / "sleeper.log", 1.0, state, spent_s=5.0)
    finished = []
    jobs.run_jobs([job], 1, jobs.Clock(0), 30, "test", on_done=finished.append)
    assert finished == [job] and job.over_budget and job.rc == 130
    assert job.elapsed() < 30
    recorded = json.loads(state.read_text())
    assert recorded["status"] == "stopped" and recorded["budget_s"] == 6.0 and 6.0 <= recorded["spent_s"] < 35
    assert "started" in (tmp_path / "sleeper.log").read_text()


def test_interrupting_the_stage_stops_its_running_jobs(tmp_path):
    child = "import time\ntime.sleep(60)\n"
    job = jobs.Job("sleeper", [sys.executable, "-c", child], tmp_path / "s.log", 100.0)
    clock = jobs.Clock(0)
    signal.signal(signal.SIGALRM, lambda *a: setattr(clock, "stop_requested", True))
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(jobs.Interrupted):
            jobs.run_jobs([job], 1, clock, 30, "test")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    assert job.proc.poll() is not None  # terminated, not left behind
