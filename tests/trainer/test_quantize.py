"""`crack-train quantize`: a real QDQ INT8 file, judged by the project's metrics on a real split.

The model is a tiny hand-built ONNX crack detector (dark pixels -> crack) so its F1 means
something without training: good calibration keeps it, absurd calibration ruins it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="onnx is needed to build and quantise the test model")
pytest.importorskip("onnxruntime", reason="onnxruntime is needed to calibrate and evaluate")

import cv2  # noqa: E402

from common import exits  # noqa: E402
from models.card import ModelCard, load_card, sha256_file, write_card  # noqa: E402
from trainer.data import list_pairs, training_pairs  # noqa: E402
from trainer.quantize import AccuracyLoss, evaluate_f1, main, quantize  # noqa: E402

SIZE = 64


def dark_detector(path: Path) -> Path:
    """crack_prob = sigmoid(-8 * (mean_bgr + 0.25)): pixels darker than about 96/255 are crack."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.full((1, 3, 3, 3), 0.0, np.float32)
    w[0, :, 1, 1] = -8.0 / 3.0  # a 3x3 kernel whose centre does the work: QDQ sees a real conv
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["logit"], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["logit"], ["crack_prob"])],
        "dark_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("crack_prob", TensorProto.FLOAT, [1, 1, "H", "W"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([-2.0], np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    write_card(ModelCard(name=path.stem, input_size=(SIZE, SIZE), threshold=0.5, sha256=sha256_file(path),
                         training={"val_fraction": 0.25, "val_seed": 0}), path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """12 train + 4 test road-like 64x64 photos with dark 1-2 px cracks, CrackForest layout."""
    root = tmp_path_factory.mktemp("roads")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    names = [f"{i:03d}" for i in range(16)]
    for name in names:
        img = np.clip(rng.normal(150, 25, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        for _ in range(2):
            p = rng.integers(0, SIZE, 4)
            cv2.line(mask, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), 255, int(rng.integers(1, 3)))
        img[mask > 0] = rng.integers(40, 130, (np.count_nonzero(mask), 1))
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
    (root / "split.json").write_text(json.dumps({"train": names[:12], "test": names[12:]}))
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return dark_detector(tmp_path_factory.mktemp("model") / "dark.onnx")


def _splits(root: Path):
    val = list_pairs(root, "val", 0.25, 0)
    return training_pairs(root, "train", 0.25, 0), val


def test_quantize_writes_int8_file_and_card(dataset, model, tmp_path, capsys):
    out = tmp_path / "dark-int8.onnx"
    rc = main([str(model), "--data", str(dataset), "--out", str(out), "--calib-count", "6"])
    assert rc == 0, capsys.readouterr().err
    card = load_card(out)  # also checks the card's sha256 against the file
    assert card.precision == "int8" and card.sha256 == sha256_file(out)
    guard = card.quantization["guard"]
    assert guard["f1_fp32"] > 0.8, "the fixture model should find the dark cracks"
    assert guard["f1_fp32"] - guard["f1_int8"] <= 0.01
    assert card.metrics["val_f1_tol2_int8"] == guard["f1_int8"]
    assert [list(s) for s in card.validated_sizes] == [[SIZE, SIZE]]
    train, val = _splits(dataset)
    calib = {Path(p).name for p in card.quantization["calibration_images"]}
    assert len(calib) == 6
    assert calib <= {p.image.name for p in train}
    assert not calib & {p.image.name for p in val}, "calibration must not see validation images"
    assert guard["f1_int8"] == pytest.approx(evaluate_f1(out, val, 0.5), abs=1e-6)
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "wrote" in capsys.readouterr().out


def test_guard_refuses_absurd_calibration(dataset, model, tmp_path):
    # Calibrating on flat grey frames gives activation ranges near zero: real frames clip.
    grey = []
    for i in range(3):
        grey.append(tmp_path / f"grey{i}.png")
        cv2.imwrite(str(grey[-1]), np.full((SIZE, SIZE, 3), 127 + i, np.uint8))
    _, val = _splits(dataset)
    out = tmp_path / "bad-int8.onnx"
    with pytest.raises(AccuracyLoss) as err:
        quantize(model, out, grey, val, max_f1_drop=0.01)
    f1_fp32 = evaluate_f1(model, val, 0.5)
    msg = str(err.value)
    assert f"fp32={f1_fp32:.4f}" in msg and "int8=" in msg
    f1_int8 = float(msg.split("int8=")[1].split()[0])
    assert f1_fp32 - f1_int8 > 0.1
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_negative_allowance_refuses_with_its_own_exit_status(dataset, model, tmp_path, capsys):
    out = tmp_path / "strict-int8.onnx"
    rc = main([str(model), "--data", str(dataset), "--out", str(out), "--calib-count", "3", "--max-f1-drop", "-1"])
    assert rc == AccuracyLoss.exit_code == exits.FAILURE
    err = capsys.readouterr().err
    assert "INT8 refused" in err and "fp32=" in err and "int8=" in err and "-1.0000" in err
    assert not out.exists()


def test_bad_inputs_have_distinct_exit_status(dataset, model, tmp_path, capsys):
    assert main([str(tmp_path / "nope.onnx"), "--data", str(dataset)]) == 66
    assert "nope.json" in capsys.readouterr().err
    assert main([str(model), "--data", str(tmp_path / "no-data")]) == 66
    assert "no-data" in capsys.readouterr().err
    assert main([str(model), "--data", str(dataset), "--calib-count", "0"]) == 78
    assert "calib_count" in capsys.readouterr().err
    int8 = tmp_path / "already.onnx"
    int8.write_bytes(model.read_bytes())
    write_card(load_card(model).model_copy(update={"precision": "int8"}), int8)
    assert main([str(int8), "--data", str(dataset)]) == 78
    assert "already an INT8 model" in capsys.readouterr().err
