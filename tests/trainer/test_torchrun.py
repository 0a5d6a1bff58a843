"""crack-train under torchrun: two gloo ranks on this CPU train, stop, resume and label as one process does.

Every run here is real: ``python -m torch.distributed.run`` (torchrun) starts two ranks that join a
gloo process group on loopback (``--standalone`` picks a free port).  One process and two are given
the same global batch, seed and settings; what must agree is stated with its tolerance at each test.
The asymmetric loss is a per-pixel mean, so two equal shares of a batch average to the batch's loss;
``bce-dice`` takes its class weight and Dice over each rank's share (docs/training.md says so).
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import torch

from models import create_model
from trainer.checkpoint import read_checkpoint
from trainer.cli import main
from trainer.data import StepShares
from trainer.distributed import World, world_from_env

REPO = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT = 300  # generous: the CI machine is two shared cores
# A test here starts up to two torchrun groups (each about 10 s of CPU): more than the suite's 180 s
# must not end one on a busy machine (measured here: 70 s of CPU for the file, 55 s for the longest test).
pytestmark = pytest.mark.timeout(2 * LAUNCH_TIMEOUT)


def tiny_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """Four crops a step (two per rank), two steps an epoch, fp32 (bf16 rounds differently per batch size)."""
    return ["student", "--plain", "--data", f"{data}:train", "--run-dir", str(run_dir), "--crop", "32",
            "--batch-size", "4", "--samples-per-epoch", "8", "--val-max-images", "1", "--val-size", "32",
            "--val-fraction", "0.34", "--threads", "1", "--device", "cpu", "--loss", "asymmetric", "--no-amp",
            "--seed", "0", *extra]


def torchrun(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "trainer.cli", *args]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    e["PYTHONPATH"] = str(REPO)
    return e


def run_torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun(nproc, args), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_dataset) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ddp") / "tiny")


@pytest.fixture(scope="module")
def one_proc(data: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ddp") / "one"
    assert main(tiny_args(data, run, "--epochs", "3")) == 0
    return run


@pytest.fixture(scope="module")
def two_procs(data: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ddp") / "two"
    r = run_torchrun(2, tiny_args(data, run, "--epochs", "3"))
    assert r.returncode == 0, r.stderr[-4000:]
    assert "rank=0 event=start" in r.stderr and "world_size=2 per_rank_batch=2" in r.stderr
    assert "rank=1 event=start" not in r.stderr   # rank 1 trains quietly
    return run


def test_shares_of_the_ranks_union_to_the_one_process_batches():
    one = list(StepShares(22, 4))
    assert one == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]
    for world in (2, 4):
        ranks = [list(StepShares(22, 4, r, world)) for r in range(world)]
        assert all(len(steps) == len(one) for steps in ranks)
        for step, batch in enumerate(one):
            shares = [ranks[r][step] for r in range(world)]
            assert sorted(sum(shares, [])) == batch                      # the same crops, split
            assert len({i for s in shares for i in s}) == len(batch)     # and no crop twice


def test_two_processes_train_like_one_and_write_the_same_checkpoint(one_proc, two_procs, tmp_path):
    rows1, rows2 = read_csv(one_proc / "log.csv"), read_csv(two_procs / "log.csv")
    assert [r["epoch"] for r in rows2] == ["0", "1", "2"]
    assert float(rows2[-1]["train_loss"]) < float(rows2[0]["train_loss"])   # it learns
    # The loss of each epoch is the global batch's: equal to one process's up to float rounding
    # (measured 7e-6 relative; with per-rank BatchNorm, --no-sync-bn, 7e-4).
    for a, b in zip(rows1, rows2):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-4)

    ck1 = read_checkpoint(one_proc / "last.pt", needs=())
    ck2 = read_checkpoint(two_procs / "last.pt", needs=())
    assert ck2.keys() == ck1.keys() and ck2["meta"].keys() == ck1["meta"].keys()
    assert {k: v.shape for k, v in ck2["model"].items()} == {k: v.shape for k, v in ck1["model"].items()}
    assert json.loads((two_procs / "config.json").read_text())["world_size"] == 2

    # Same weights within 5 % of the distance training moved them (measured 0.6 %: Adam's first
    # steps are about lr * sign(gradient), so a gradient near 0 that rounds the other way moves a
    # weight the other way; with per-rank BatchNorm it is 22 %).
    torch.manual_seed(0)
    start = create_model("student").state_dict()
    w1, w2 = ck1["model"], ck2["model"]
    learned = [k for k in w1 if w1[k].is_floating_point() and "running" not in k]
    apart = sum(((w2[k] - w1[k]) ** 2).sum() for k in learned).sqrt()
    moved = sum(((w1[k] - start[k]) ** 2).sum() for k in learned).sqrt()
    assert moved > 0 and apart / moved < 0.05, f"{apart / moved:.3f}"
    # BatchNorm's running statistics come from the global batch (measured 3e-4 apart; per rank 0.09).
    for k in (k for k in w1 if "running" in k):
        assert torch.allclose(w2[k], w1[k], atol=1e-2), k

    out = tmp_path / "two.onnx"
    assert main(["export", "--checkpoint", str(two_procs / "best.pt"), "--out", str(out), "--input-size", "32x32"]) == 0
    assert out.stat().st_size > 0 and json.loads(out.with_suffix(".json").read_text())["params"] == 1_179_392


def test_sigterm_to_torchrun_stops_both_ranks_and_two_ranks_resume(data, one_proc, tmp_path):
    run = tmp_path / "killed"
    proc = subprocess.Popen(torchrun(2, tiny_args(data, run, "--epochs", "50")), cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    try:
        while not (run / "last.pt").exists():
            assert proc.poll() is None, proc.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    # torchrun forwards SIGTERM to each rank and, stopped itself, reports no exit status of theirs
    # (it exits 1 with its SignalException): each rank says its own.
    for rank in (0, 1):
        assert f"(rank {rank} of 2): interrupted" in out, out[-4000:]
        assert f"(rank {rank} of 2): exit 130" in out, out[-4000:]
    assert "forcefully exiting" not in out   # no rank needed torchrun's SIGKILL
    assert not list(run.glob("*.tmp")), list(run.iterdir())
    done = read_checkpoint(run / "last.pt", "resume", needs=("model", "optimizer", "epoch", "history"))["epoch"]
    assert [int(r["epoch"]) for r in read_csv(run / "log.csv")] == list(range(done + 1))

    ref = read_csv(one_proc / "log.csv")
    assert done + 1 < len(ref), f"stopped only after epoch {done}"
    r = run_torchrun(2, tiny_args(data, run, "--epochs", str(len(ref)), "--resume"))
    assert r.returncode == 0, r.stderr[-4000:]
    got = read_csv(run / "log.csv")
    assert [int(x["epoch"]) for x in got] == list(range(len(ref)))
    # The resumed epochs are the ones an uninterrupted run (one process, same global batch) trains.
    for a, b in zip(ref[done + 1:], got[done + 1:]):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-4)


def test_two_ranks_make_the_soft_labels_one_process_makes(data, one_proc, tmp_path):
    # Any crack-train checkpoint labels; the student's keeps this quick.  One thread per process:
    # the same convolution order, so the same bytes.
    teacher = one_proc / "best.pt"
    common = ["--teacher-ckpt", str(teacher), "-T", "4", "--data", f"{data}:train", "--val-fraction", "0.34",
              "--device", "cpu", "--threads", "1"]
    assert main(["labels", *common, "--out", str(tmp_path / "one")]) == 0
    r = run_torchrun(2, ["labels", *common, "--out", str(tmp_path / "two")])
    assert r.returncode == 0, r.stderr[-4000:]
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert two == one and len(one["images"]) == 4
    for entry in one["images"]:
        for rel in entry["labels"]:
            a = cv2.imread(str(tmp_path / "one" / rel), cv2.IMREAD_GRAYSCALE)
            b = cv2.imread(str(tmp_path / "two" / rel), cv2.IMREAD_GRAYSCALE)
            assert a is not None and b is not None and (a == b).all(), rel


def test_profile_times_one_and_two_processes(capfd):
    assert main(["profile", "--train", "--arch", "student", "--procs", "1", "2", "--crop", "32", "--batch-size", "2",
                 "--steps", "1", "--precision", "fp32", "--json"]) == 0
    lines = [json.loads(x) for x in capfd.readouterr().out.splitlines() if x.startswith("{")]
    rows = [x for x in lines if "img_per_s" in x]
    assert [(x["procs"], x["batch"], x["precision"]) for x in rows] == [(1, 2, "fp32"), (2, 2, "fp32")]
    assert all(x["img_per_s"] > 0 for x in rows)
    assert [x["procs"] for x in lines if "speedup" in x] == [2]


def test_torchrun_environment_is_read_and_checked(monkeypatch, tmp_path, capsys):
    assert world_from_env({}) == World()
    w = world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.local_rank, w.distributed, w.is_main) == (3, 4, 1, True, False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["export", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path / "x.onnx")]) == 78
    assert "RANK=5 WORLD_SIZE=2" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    # A step that reads or writes one file runs as one process: refused before anything starts.
    assert main(["export", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path / "x.onnx")]) == 78
    assert "start it without torchrun" in capsys.readouterr().err


def test_what_rank_0_finds_wrong_every_rank_reports(data, tmp_path):
    # Only rank 0 reads last.pt; the others must not wait for it until the timeout.
    r = run_torchrun(2, tiny_args(data, tmp_path / "never-ran", "--epochs", "1", "--resume"))
    assert r.returncode != 0
    for rank in (0, 1):
        assert f"(rank {rank} of 2): {tmp_path / 'never-ran' / 'last.pt'}: nothing to resume" in r.stderr, \
            r.stderr[-4000:]
        assert f"(rank {rank} of 2): exit 66" in r.stderr


def test_a_global_batch_that_does_not_split_is_refused():
    from trainer.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size 3 does not split over 2 processes"):
        StepShares(8, 3, 0, 2)
