"""`crack-train quantize` reaches trainer.quantize through the one console script."""
from __future__ import annotations

import subprocess
import sys


def test_quantize_subcommand_is_wired(tmp_path):
    missing = tmp_path / "nope.onnx"
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "quantize", str(missing), "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 66, proc.stderr
    assert "nope" in proc.stderr


def test_quantize_listed_in_help():
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "quantize" in proc.stdout
