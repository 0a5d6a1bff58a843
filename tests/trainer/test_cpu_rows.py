"""tools/cpu_rows.py: the no-GPU ablation rows, run as a user runs it, on a tiny exported student."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from models.card import load_card

REPO = Path(__file__).resolve().parents[2]


def test_rows_use_a_validation_threshold_and_leave_the_card_alone(exported, tiny_data, tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(exported, model)
    shutil.copy(exported.with_suffix(".json"), model.with_suffix(".json"))
    card_before = model.with_suffix(".json").read_text()
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "tools/cpu_rows.py", str(model), "--cfd", str(tiny_data), "--runs", "2",
                           "--threads", "1", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and set(rows[0]["modes"]) == {"resize", "native"}
    for mode in rows[0]["modes"].values():
        assert mode["val_images"] >= 1 and mode["test_images"] == 2
        assert 0.0 <= mode["tol2"]["f1"] <= 1.0 and 0.0 <= mode["strict"]["iou"] <= 1.0
    assert rows[0]["cpu"]["input"] == "1x3x448x448" and rows[0]["cpu"]["median_ms"] > 0
    assert rows[0]["sha256"] == load_card(model).sha256
    assert "| m.onnx |" in proc.stdout and proc.stdout.count("\n| m.onnx") == 2
    assert model.with_suffix(".json").read_text() == card_before, "the model's own card was rewritten"


def test_a_missing_model_is_named(tmp_path):
    proc = subprocess.run([sys.executable, "tools/cpu_rows.py", str(tmp_path / "none.onnx")], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 66 and "none.onnx: model or its card not found" in proc.stderr
