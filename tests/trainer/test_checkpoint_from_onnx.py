"""tools/checkpoint_from_onnx.py: a released ONNX file back to a checkpoint --init can start from."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import checkpoint_from_onnx as tool  # noqa: E402


def test_the_rebuilt_checkpoint_predicts_what_the_onnx_file_does(exported, tmp_path):
    from trainer.checkpoint import read_checkpoint
    from trainer.labels import load_checkpoint

    out = tmp_path / "init.pt"
    assert tool.main([str(exported), str(out)]) == 0
    ck = read_checkpoint(out, "init")
    assert ck["meta"]["arch"] == "student" and ck["meta"]["from_onnx"]["path"] == str(exported)
    net, meta = load_checkpoint(out)
    assert tool.check_parity(net, meta, exported, (32, 48)) < 1e-4


def test_a_missing_file_and_a_file_of_another_variant_are_refused(exported, tmp_path, capsys):
    import shutil

    from models.card import load_card, write_card

    assert tool.main([str(tmp_path / "nope.onnx"), str(tmp_path / "x.pt")]) == 66
    other = tmp_path / "other.onnx"
    shutil.copy(exported, other)
    card = load_card(exported)
    card.arch = "student-mcld"  # the weights are a 'student': they do not fit
    write_card(card, other)
    assert tool.main([str(other), str(tmp_path / "y.pt")]) == 65
    assert "student-mcld" in capsys.readouterr().err and not (tmp_path / "y.pt").exists()
