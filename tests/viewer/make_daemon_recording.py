"""Make the small recording committed under tests/data/ from the real daemon (run by hand, not a test).

    .venv/bin/python tests/viewer/make_daemon_recording.py tests/data/daemon-recording

Exports the registered student with random weights (seed 0, card threshold 0.74 so about 5 % of
the pixels are "crack") unless ``--model`` names an ONNX file, starts ``crack-viewer record``, then runs ``crack-edge run`` on the demo clip at 64x96
with frame JPEGs for ``--frames`` masks in "every frame" mode, and waits for both.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def export_random_student(folder: Path, size: tuple[int, int] = (64, 96), threshold: float = 0.74) -> Path:
    from trainer.export import export_untrained

    # Random weights put most probabilities near 0.6: a high threshold keeps the mask sparse, like cracks.
    return export_untrained(folder / "student-random.onnx", input_size=size, threshold=threshold)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--source", default=str(REPO / "edge" / "demo" / "crackforest.mp4"))
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        ep = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or export_random_student(Path(tmp))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        rec = subprocess.Popen([sys.executable, "-m", "viewer.cli", "record", "--connect", ep, "--out", str(args.out),
                                "--duration", "60"], cwd=REPO, env=env)
        daemon = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--source", args.source, "--model", str(model),
                                 "--publish", ep, "--max-frames", str(args.frames), "--inference-size", "64x96",
                                 "--mode", "every", "--no-loop", "--vehicle-id", "demo-van", "--wait-subscriber", "20"],
                                cwd=REPO, env=env, timeout=120)
        rec.send_signal(2)
        rec.wait(20)
    return daemon.returncode or rec.returncode


if __name__ == "__main__":
    sys.exit(main())
