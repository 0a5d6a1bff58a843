"""export -> ONNX + card (parity with PyTorch), eval (report, overlays, figure, threshold rules),
profile, engine refusal."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.card import METADATA_KEY, embedded_card, load_card
from models.mcff import DeployHead
from trainer.cli import main
from trainer.engine import tensorrt_available
from trainer.labels import load_checkpoint


def test_export_follows_the_model_contract_and_matches_pytorch(exported, student_run):
    card = load_card(exported)  # verifies the sha256 against the file
    assert (card.input_name, card.output_name, card.input_size) == ("image", "crack_prob", (64, 64))
    assert card.params == 1_179_392 and card.gflops == pytest.approx(63.94 * 64 * 64 / 448 / 448, abs=0.01)
    assert card.training["role"] == "plain-student" and card.training["epochs_trained"] >= 1
    assert 0.0 < card.threshold < 1.0 and card.model_extra["opset"] == 17
    model = onnx.load(str(exported))
    assert model.opset_import[0].version == 17
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))
    # The whole card, less its own file's sha256, is in the metadata (and nothing else: no drifting copies).
    meta = {p.key: p.value for p in model.metadata_props}
    assert list(meta) == [METADATA_KEY] and json.loads(meta[METADATA_KEY]) == card.embedded()

    net, meta = load_checkpoint(student_run / "best.pt")
    head = DeployHead(net, meta["deploy_temperature"]).eval()
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 36, 52)).astype(np.float32)
    got = torch.from_numpy(sess.run(["crack_prob"], {"image": x})[0])
    with torch.inference_mode():
        want = head(torch.from_numpy(x))
    assert got.shape == (2, 1, 36, 52)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0


def test_export_prints_the_parity(student_run, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(student_run / "best.pt"), "--out", str(tmp_path / "m.onnx"),
                 "--threshold", "0.35", "--parity-size", "32x32"]) == 0
    assert "max abs diff" in capsys.readouterr().out
    assert load_card(tmp_path / "m.onnx").threshold == 0.35
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")]) == 66


def test_eval_of_onnx_writes_report_overlays_and_figure(exported, tiny_data, tmp_path):
    model = tmp_path / exported.name
    shutil.copy(exported, model)
    shutil.copy(exported.with_suffix(".json"), model.with_suffix(".json"))
    out = tmp_path / "val"
    assert main(["eval", "--model", str(model), "--data", str(tiny_data), "--split", "val", "--val-fraction", "0.34",
                 "--pick-threshold", "--write-card", "--out", str(out), "--worst", "2", "--figure-rows", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["split"] == "val" and report["images"] == 2 and report["mode"] == "resize"
    assert report["threshold_source"].startswith("picked on val")
    best = max(report["curve"], key=lambda c: c["f1_tol"])["f1_tol"]
    assert report["metrics"]["tol2"]["f1"] == pytest.approx(best)
    assert set(report["metrics"]) >= {"strict", "tol2", "published_A", "published_M", "definitions"}
    for name in report["worst"]:
        assert cv2.imread(str(out / f"worst_{name}.png")) is not None
    fig = cv2.imread(str(out / "figure.png"))
    assert fig is not None and fig.shape[1] >= 3 * 96
    card = load_card(model)
    assert card.threshold == report["threshold"]
    assert card.metrics["tiny:val@resize"]["tol2"]["f1"] == pytest.approx(report["metrics"]["tol2"]["f1"])
    assert card.inference == "resize" and card.validated_sizes == [tuple(card.input_size)]

    # Picked at the images' own size, the threshold belongs to that mode: the card says 'native' now,
    # and the padded sizes it ran at join the validated ones.
    assert main(["eval", "--model", str(model), "--data", str(tiny_data), "--split", "val", "--val-fraction", "0.34",
                 "--mode", "native", "--pick-threshold", "--write-card", "--out", str(tmp_path / "vn")]) == 0
    native = json.loads((tmp_path / "vn" / "report.json").read_text())
    card = load_card(model)
    assert card.inference == "native" and card.threshold == native["threshold"]
    assert embedded_card(model).embedded() == card.embedded(), "--write-card keeps the ONNX metadata in step"
    assert set(card.validated_sizes) == {tuple(card.input_size), *(tuple(s) for s in native["sizes"])}
    assert all(h % 4 == 0 and w % 4 == 0 for h, w in native["sizes"])

    # On test, the card's (validation) threshold is used, and test may not pick one.
    test_out = tmp_path / "test"
    assert main(["eval", "--model", str(model), "--data", str(tiny_data), "--split", "test", "--mode", "native",
                 "--out", str(test_out)]) == 0
    test_report = json.loads((test_out / "report.json").read_text())
    assert test_report["threshold"] == card.threshold and test_report["threshold_source"] == "card"
    assert main(["eval", "--model", str(model), "--data", str(tiny_data), "--split", "test",
                 "--pick-threshold", "--out", str(tmp_path / "x")]) == 78


def test_eval_of_a_checkpoint_agrees_with_its_onnx_export(exported, student_run, tiny_data, tmp_path):
    reports = []
    for model in (exported, student_run / "best.pt"):
        out = tmp_path / model.suffix[1:]
        assert main(["eval", "--model", str(model), "--data", str(tiny_data), "--split", "test",
                     "--threshold", "0.5", "--size", "64x64", "--out", str(out), "--device", "cpu",
                     "--figure-rows", "0"]) == 0
        reports.append(json.loads((out / "report.json").read_text()))
    onnx_r, ckpt_r = reports
    assert ckpt_r["kind"] == "checkpoint" and onnx_r["kind"] == "onnx"
    assert onnx_r["metrics"]["counts"]["predicted"] == pytest.approx(ckpt_r["metrics"]["counts"]["predicted"], abs=3)


def test_profile_prints_params_and_gflops_as_json(capsys):
    assert main(["profile", "--arch", "student", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["params"] == 1_179_392 and r["gflops"] == pytest.approx(63.9, abs=0.1)
    assert main(["profile", "--arch", "teacher", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["params"] == 32_889_152 and r["gflops"] == pytest.approx(1338, abs=1)
    assert main(["profile", "--arch", "resnet"]) == 78


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here: the refusal cannot be shown")
def test_engine_is_refused_clearly_without_tensorrt(exported, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no trtexec either
    assert main(["engine", "--onnx", str(exported), "--precision", "fp16"]) == 69
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert main(["engine", "--onnx", str(exported), "--precision", "int8"]) == 69


def test_eval_shows_progress_and_ctrl_c_stops_it_with_130(exported, make_dataset, tmp_path):
    from terminal import run_at_terminal

    data = make_dataset(tmp_path / "many", n=80, size=(192, 256), seed=5, split={"test": [f"{i:03d}" for i in range(80)]})
    out = tmp_path / "report"
    code, _, text = run_at_terminal("trainer.cli", "eval", "--model", str(exported), "--data", str(data),
                                    "--split", "test", "--mode", "native", "--out", str(out), "--threads", "1",
                                    ctrl_c_when=lambda line: "event=progress eval images=20/80" in line)
    assert code == 130, text[-3000:]
    assert "crack-train eval: interrupted" in text and "Traceback" not in text
    assert not (out / "report.json").exists(), "a report of a quarter of the images would pass for the whole set"
