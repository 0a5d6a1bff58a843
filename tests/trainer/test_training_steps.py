"""crack-train end to end on tiny crops: every artefact written, re-read, and refused when wrong."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from trainer.cli import main
from trainer.labels import load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_plain_student_writes_every_artefact(student_run):
    for name in ("best.pt", "last.pt", "log.csv", "curves.png", "config.json"):
        assert (student_run / name).stat().st_size > 0, name
    rows = read_csv(student_run / "log.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(0.0 <= float(r["val_f1_tol"]) <= 1.0 and float(r["train_loss"]) > 0 for r in rows)
    assert cv2.imread(str(student_run / "curves.png")) is not None
    cfg = json.loads((student_run / "config.json").read_text())
    assert cfg["settings"]["crop"] == 32 and cfg["settings"]["loss"] == "bce-dice" and cfg["device"] == "cpu"
    net, meta = load_checkpoint(student_run / "best.pt")
    assert meta["arch"] == "student" and meta["role"] == "plain-student" and "val_threshold" in meta["val"]
    assert sum(p.numel() for p in net.parameters()) == 1_179_392


def test_resume_reproduces_an_uninterrupted_run(tiny_data, tmp_path, train_argv, student_run):
    run = tmp_path / "resumed"
    assert main(["student", "--plain", *train_argv(tiny_data, run, "--epochs", "1")]) == 0
    assert main(["student", "--plain", *train_argv(tiny_data, run, "--epochs", "2", "--resume")]) == 0
    got, want = read_csv(run / "log.csv"), read_csv(student_run / "log.csv")
    assert len(got) == 2
    for g, w in zip(got, want):
        assert float(g["train_loss"]) == pytest.approx(float(w["train_loss"]), rel=1e-4)


def test_resume_without_a_checkpoint_is_refused(tiny_data, tmp_path, train_argv):
    assert main(["student", "--plain", *train_argv(tiny_data, tmp_path / "none", "--resume")]) == 66


def test_init_fine_tunes_from_another_runs_weights(tiny_data, tmp_path, train_argv, student_run):
    run = tmp_path / "fine-tuned"
    # The first step's loss starts from the trained weights, so it sits well below a fresh start's.
    assert main(["student", "--plain", *train_argv(tiny_data, run, "--epochs", "1", "--lr", "1e-9",
                                                   "--init", str(student_run / "best.pt"))]) == 0
    start, _ = load_checkpoint(student_run / "best.pt")
    tuned, meta = load_checkpoint(run / "best.pt")
    # lr 1e-9: the weights are still the init's (BatchNorm's running statistics do move, so not those)
    for (name, a), (_, b) in zip(start.named_parameters(), tuned.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert meta["init"]["checkpoint"] == str(student_run / "best.pt") and len(meta["init"]["sha256"]) == 64
    assert meta["init"]["epoch"] in (0, 1)


def test_ema_is_what_is_judged_and_saved_and_resumes(tiny_data, tmp_path, train_argv, student_run):
    init = str(student_run / "best.pt")
    # A decay this close to 1 keeps the average at the init's weights while a big rate moves the raw
    # ones far: best.pt must be the average (what validation judged), last.pt carries both.
    run = tmp_path / "ema-still"
    assert main(["student", "--plain", *train_argv(tiny_data, run, "--epochs", "2", "--lr", "0.05", "--init", init,
                                                   "--ema-decay", "0.9999999")]) == 0
    start, _ = load_checkpoint(student_run / "best.pt")
    saved, meta = load_checkpoint(run / "best.pt")
    assert meta["settings"]["ema_decay"] == 0.9999999
    for (name, a), (_, b) in zip(start.named_parameters(), saved.named_parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert int(last["ema"]["n_averaged"]) == 1 + 4  # the init, then 2 steps x 2 epochs
    moved = [k for k, v in last["model"].items() if v.is_floating_point()
             and not torch.allclose(v, saved.state_dict()[k], atol=1e-3)]
    assert moved, "the raw weights should have moved at lr 0.05"
    # Resuming restores the average: one epoch + one resumed equals two in a row, average included.
    args = ["--lr", "1e-3", "--init", init, "--ema-decay", "0.5", "--warmup-steps", "3"]
    whole, split = tmp_path / "ema-whole", tmp_path / "ema-split"
    assert main(["student", "--plain", *train_argv(tiny_data, whole, "--epochs", "2", *args)]) == 0
    assert main(["student", "--plain", *train_argv(tiny_data, split, "--epochs", "1", *args)]) == 0
    assert main(["student", "--plain", *train_argv(tiny_data, split, "--epochs", "2", "--resume", *args)]) == 0
    a = torch.load(whole / "last.pt", map_location="cpu", weights_only=False)["ema"]
    b = torch.load(split / "last.pt", map_location="cpu", weights_only=False)["ema"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    # Warm-up: 2 steps per epoch, 3 warm-up steps: epoch 0 ends at 2/3 of the rate, epoch 1 at the rate.
    lrs = [float(r["lr"]) for r in read_csv(whole / "log.csv")]
    assert lrs == pytest.approx([1e-3 * 2 / 3, 1e-3])


def test_resume_of_a_run_without_ema_under_ema_is_refused(tiny_data, tmp_path, train_argv, capsys):
    run = tmp_path / "no-ema"
    assert main(["student", "--plain", *train_argv(tiny_data, run, "--epochs", "1")]) == 0
    assert main(["student", "--plain", *train_argv(tiny_data, run, "--epochs", "2", "--resume",
                                                   "--ema-decay", "0.9")]) == 78
    assert "saved without --ema-decay" in capsys.readouterr().err


def test_init_refuses_a_missing_or_foreign_checkpoint(tiny_data, tmp_path, train_argv, capsys):
    assert main(["student", "--plain", *train_argv(tiny_data, tmp_path / "a", "--init", str(tmp_path / "no.pt"))]) == 66
    assert "no.pt: checkpoint not found" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["student", "--plain", *train_argv(tiny_data, tmp_path / "b", "--init", str(junk))]) == 65  # one reader: DATAERR
    assert "junk.pt: not a crack-train checkpoint" in capsys.readouterr().err


def test_sigterm_loses_at_most_one_epoch_and_resume_continues(tiny_data, tmp_path, train_argv):
    run = tmp_path / "killed"
    argv = [sys.executable, "-m", "trainer.cli", "student", "--plain", *train_argv(tiny_data, run, "--epochs", "50")]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    try:
        while not (run / "last.pt").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "--resume" in out
    done = torch.load(run / "last.pt", weights_only=False)["epoch"]
    assert main(["student", "--plain", *train_argv(tiny_data, run, "--epochs", str(done + 2), "--resume")]) == 0
    assert [int(r["epoch"]) for r in read_csv(run / "log.csv")] == list(range(done + 2))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_asked_mid_epoch_keeps_that_epoch(tiny_data, tmp_path, train_argv, monkeypatch, signum):
    """The signal lands inside validation (CI once caught it inside ``import matplotlib``): the
    handler must not raise there, the epoch is finished and saved, then the run stops with 130."""
    import os

    import trainer.teacher

    finished = []

    class SignalledValidator(trainer.teacher.Validator):
        def __call__(self, net):
            os.kill(os.getpid(), signum)
            result = super().__call__(net)
            finished.append(True)
            return result

    monkeypatch.setattr(trainer.teacher, "Validator", SignalledValidator)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in a background job
    run = tmp_path / "stopped"
    assert main(["student", "--plain", *train_argv(tiny_data, run, "--epochs", "5")]) == 130
    assert finished == [True]
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 0
    assert [r["epoch"] for r in read_csv(run / "log.csv")] == ["0"]
    assert signal.getsignal(signal.SIGINT) is before   # handlers given back


def test_bad_settings_exit_78_and_toml_env_flag_precedence(tiny_data, tmp_path, monkeypatch, train_argv):
    from trainer.config import load_settings

    toml = tmp_path / "train.toml"
    toml.write_text('[train]\ncrop = 96\nbatch_size = 3\nepochs = 7\n')
    monkeypatch.setenv("CRACK_TRAIN_BATCH_SIZE", "5")
    cfg = load_settings(toml, epochs=9)
    assert (cfg.crop, cfg.batch_size, cfg.epochs) == (96, 5, 9)      # TOML < env < flag
    toml.write_text('[train]\ncrops = 96\n')
    assert main(["student", "--plain", "--config", str(toml), *train_argv(tiny_data, tmp_path / "r")]) == 78
    assert main(["student", "--plain", *train_argv(tiny_data, tmp_path / "r", "--crop", "30")]) == 78


def test_missing_mask_stops_training_with_the_file_name(make_dataset, tmp_path, train_argv, capsys):
    root = make_dataset(tmp_path / "broken", n=4)
    (root / "masks" / "001.png").unlink()
    assert main(["student", "--plain", *train_argv(root, tmp_path / "r")]) == 65
    assert "001.png" in capsys.readouterr().err


def test_teacher_labels_and_distilled_student(make_dataset, tmp_path, train_argv, capsys):
    # Small photos: the 33 M-parameter teacher labels them at full size on a busy CPU.
    tiny_data = make_dataset(tmp_path / "small", n=6, size=(32, 48), seed=2)
    teacher_run = tmp_path / "teacher"
    args = train_argv(tiny_data, teacher_run, "--epochs", "1", "--batch-size", "2", "--samples-per-epoch", "2",
                      "--loss", "asymmetric", "--optimizer", "rmsprop", "--val-max-images", "1")
    assert main(["teacher", *args]) == 0
    _, meta = load_checkpoint(teacher_run / "best.pt")
    assert meta["arch"] == "teacher" and meta["loss"] == "asymmetric"
    assert json.loads((teacher_run / "config.json").read_text())["settings"]["dilate_iterations"] is None

    labels = tmp_path / "labels"
    data_args = ["--data", f"{tiny_data}:train", "--val-fraction", "0.34", "--device", "cpu", "--threads", "2"]
    assert main(["labels", "--teacher-ckpt", str(teacher_run / "best.pt"), "-T", "10", "--out", str(labels),
                 *data_args]) == 0
    manifest = json.loads((labels / "manifest.json").read_text())
    assert manifest["temperature"] == 10.0 and len(manifest["images"]) == 3
    first = manifest["images"][0]
    pngs = [cv2.imread(str(labels / r), cv2.IMREAD_GRAYSCALE) for r in first["labels"]]
    assert [p.shape for p in pngs] == [tuple(first["size"])] * 4 and all(p.dtype.name == "uint8" for p in pngs)

    student = tmp_path / "kd"
    kd_args = train_argv(tiny_data, student, "--epochs", "1", "--labels", str(labels),
                         "--teacher", str(teacher_run / "best.pt"), "--kd", "hyperthermal")
    assert main(["student", *kd_args]) == 0
    rows = read_csv(student / "log.csv")
    assert {"train_soft_loss", "train_hard_loss", "train_soft_mix"} <= set(rows[0])
    _, kd_meta = load_checkpoint(student / "best.pt")
    assert kd_meta["role"] == "distilled-student" and kd_meta["deploy_temperature"] == 10.0

    # Labels that do not belong: another teacher, another image set, a changed image.
    other = tmp_path / "other.pt"
    other.write_bytes((teacher_run / "best.pt").read_bytes() + b"x")
    capsys.readouterr()
    assert main(["student", *train_argv(tiny_data, tmp_path / "s2", "--labels", str(labels), "--epochs", "1",
                                        "--teacher", str(other))]) == 65
    assert "not by" in capsys.readouterr().err
    # Another validation carve puts an unlabelled image into training.
    assert main(["student", *train_argv(tiny_data, tmp_path / "s3", "--labels", str(labels), "--epochs", "1",
                                        "--val-seed", "1")]) == 65
    assert "no soft labels for training image" in capsys.readouterr().err
    assert main(["student", *train_argv(tiny_data, tmp_path / "s4", "--kd", "non-isothermal", "--epochs", "1",
                                        "--labels", str(labels))]) == 78
    image = Path(manifest["images"][0]["image"])
    image.write_bytes(image.read_bytes() + b"\0")  # same pixels, other bytes: the hash no longer matches
    assert main(["student", *train_argv(tiny_data, tmp_path / "s5", "--labels", str(labels), "--epochs", "1")]) == 65
    assert "changed since its soft labels were made" in capsys.readouterr().err


def _logit(png: np.ndarray) -> np.ndarray:
    p = np.clip(png.astype(np.float64) / 255.0, 1 / 255, 254 / 255)
    return np.log(p / (1 - p))


def test_born_again_labels_at_several_temperatures_from_one_pass(make_dataset, tmp_path, student_run, capsys):
    # The plain student as its own teacher, averaged over flips: image 1 is image 0 mirrored, so its
    # flip-averaged labels must be image 0's labels mirrored (a single forward is not mirror-symmetric).
    data = make_dataset(tmp_path / "mirror", n=4, size=(48, 64), seed=3)
    img = cv2.imread(str(data / "images" / "000.jpg"))
    for name, pixels in (("000", img), ("001", cv2.flip(img, 1))):  # lossless, so the mirror is exact
        (data / "images" / f"{name}.jpg").unlink()
        cv2.imwrite(str(data / "images" / f"{name}.png"), pixels)
    mask = cv2.imread(str(data / "masks" / "000.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(data / "masks" / "001.png"), cv2.flip(mask, 1))
    (data / "split.json").write_text(json.dumps({"train": ["000", "001", "002", "003"], "test": []}))
    data_args = ["--data", f"{data}:train", "--val-fraction", "0.25", "--val-seed", "5", "--device", "cpu",
                 "--threads", "2"]
    out = tmp_path / "labels"
    for flips, folder in ((["--flips"], out), ([], tmp_path / "plain")):
        assert main(["labels", "--teacher-ckpt", str(student_run / "best.pt"), "-T", "5", "15",
                     "--out", str(folder), *flips, *data_args]) == 0
    said = capsys.readouterr().out
    assert "at T=5 (mean over flips)" in said and "at T=15 (mean over flips)" in said
    m5, m15 = (json.loads((out / f"T{t}" / "manifest.json").read_text()) for t in (5, 15))
    assert (m5["temperature"], m15["temperature"]) == (5.0, 15.0)
    assert m5["teacher_tta"] == "mean over h/v flips" and m5["teacher_sha256"] == m15["teacher_sha256"]
    assert [e["image"] for e in m5["images"]] == [e["image"] for e in m15["images"]]

    def mix(folder: Path, name: str) -> np.ndarray:
        return cv2.imread(str(folder / data.name / f"{name}_mix.png"), cv2.IMREAD_GRAYSCALE)

    names = {Path(e["image"]).stem for e in m5["images"]}
    if not {"000", "001"} <= names:
        pytest.skip("the validation carve took one of the mirrored pair")
    # One pass: both temperatures come from the same logits (T * logit(p) agrees up to 8-bit rounding).
    l5, l15 = _logit(mix(out / "T5", "000")) * 5, _logit(mix(out / "T15", "000")) * 15
    inside = (mix(out / "T15", "000") > 8) & (mix(out / "T15", "000") < 247)
    assert inside.mean() > 0.5 and np.median(np.abs(l5 - l15)[inside]) < 0.5
    flipped = np.abs(mix(out / "T5", "001").astype(int) - cv2.flip(mix(out / "T5", "000"), 1).astype(int))
    single = np.abs(mix(tmp_path / "plain" / "T5", "001").astype(int)
                    - cv2.flip(mix(tmp_path / "plain" / "T5", "000"), 1).astype(int))
    assert flipped.max() <= 2 < single.max(), (flipped.max(), single.max())
