"""`make demo`: the whole system on this machine, ending by itself.

Starts the edge daemon on the bundled clip with the released model (CPU), a viewer that shows
the live overlay (a window when a display is present, PNG files otherwise) and a recorder, then
prints what happened, measured from the recording: frames, fps, latency, crack coverage.
No camera, GPU or network needed: everything runs on loopback.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def summarise(recording: Path) -> dict:
    from edge import wire
    from edge.recording import read_records

    masks = []
    for rec in read_records(recording):
        try:
            msg = wire.decode(rec.frames, decode_mask=False)
        except wire.WireError:
            continue
        if msg.kind == "mask":
            masks.append((rec.t_recv, msg.header))
    if not masks:
        return {"frames": 0}
    t = [m[0] for m in masks]
    h = [m[1] for m in masks]
    age = sorted((tr - hd["t_capture"]) * 1000 for tr, hd in masks)
    return {
        "frames": len(masks),
        "fps": round((len(t) - 1) / (t[-1] - t[0]), 2) if len(t) > 1 and t[-1] > t[0] else None,
        "infer_ms_median": round(statistics.median(x["infer_ms"] for x in h), 1),
        "latency_ms_p50": round(age[len(age) // 2], 1),
        "latency_ms_max": round(age[-1], 1),
        "crack_coverage_mean_pct": round(100 * statistics.mean(x["crack_ratio"] for x in h), 2),
        "crack_coverage_max_pct": round(100 * max(x["crack_ratio"] for x in h), 2),
        "frames_with_cracks": sum(1 for x in h if x["crack_count"] > 0),
        "longest_crack_px": round(max(x["crack_length_px"] for x in h), 1),
        "inference_size": f"{h[0]['width']}x{h[0]['height']}",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60, help="masks to publish (the clip has 60 frames)")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "demo", help="where pictures and logs go")
    ap.add_argument("--headless", action="store_true", help="write PNGs even when a display is present")
    ap.add_argument("--model", help="ONNX model (default: the released models/mcff-student.onnx)")
    ap.add_argument("--timeout", type=float, default=240.0, help="give up after this many seconds")
    args = ap.parse_args(argv)

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "frames").mkdir(parents=True)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    windowed = bool(os.environ.get("DISPLAY")) and not args.headless
    viewer_cmd = [str(BIN / "crack-viewer"), "watch", "--connect", endpoint, "--duration", str(args.timeout)]
    viewer_cmd += [] if windowed else ["--headless", "--out", str(out / "frames"), "--count", str(args.frames)]

    print(f"demo: daemon on {endpoint}, viewer {'in a window' if windowed else 'headless'}; logs in {out}")
    recorder = spawn([str(BIN / "crack-viewer"), "record", "--connect", endpoint, "--out", str(out / "recording"),
                      "--duration", str(args.timeout)], out / "recorder.log")
    viewer = spawn(viewer_cmd, out / "viewer.log")
    # The daemon waits for its first subscriber so the viewer sees the clip from its first frame.
    daemon = spawn([str(BIN / "crack-edge"), "run", "--publish", endpoint, "--max-frames", str(args.frames),
                    "--no-loop", "--wait-subscriber", "10", "--vehicle-id", "demo-van"]
                   + (["--model", args.model] if args.model else []), out / "daemon.log")
    started = time.monotonic()
    try:
        while daemon.poll() is None and time.monotonic() - started < args.timeout:
            time.sleep(0.2)
        code = stop(daemon)
        time.sleep(1.0)  # let the last messages reach the subscribers
    finally:
        # Give the viewer a moment to finish writing its last picture before it is told to stop.
        if not windowed:
            try:
                viewer.wait(5)
            except subprocess.TimeoutExpired:
                pass
        stop(viewer)
        stop(recorder)
    if code != 0:
        print(f"demo: the daemon exited with status {code}; last lines of {out / 'daemon.log'}:")
        print("".join((out / "daemon.log").read_text().splitlines(True)[-15:]))
        return 1
    figures = summarise(out / "recording")
    (out / "summary.json").write_text(json.dumps(figures, indent=2) + "\n")
    pictures = sorted((out / "frames").glob("*.png"))
    print("demo: what happened")
    for k, v in figures.items():
        print(f"  {k:26s} {v}")
    if pictures:
        print(f"  pictures                   {len(pictures)} PNGs in {out / 'frames'} (last: {pictures[-1].name})")
    print(f"  recording                  {out / 'recording'} (replay: crack-viewer replay {out / 'recording'} --bind tcp://127.0.0.1:5556)")
    report(out)
    return 0 if figures.get("frames") else 1


def has_positions(recording: Path) -> bool:
    """True when some mask header carries a position with a fix (the daemon's position source)."""
    from edge import wire
    from edge.recording import read_records

    for rec in read_records(recording):
        try:
            kind, _, header = wire.decode_header(rec.frames)
        except wire.WireError:
            continue
        if kind == "mask" and (header.get("position") or {}).get("fix"):
            return True
    return False


def report(out: Path) -> None:
    """The inspection report of the demo drive, when the daemon put positions in the headers
    (edge/demo/crackforest.gpx through [position] kind = "gpx-log"); else say why there is none."""
    if not has_positions(out / "recording"):
        print("  report                     skipped: the recording has no positions "
              "(needs the daemon's [position] gpx-log source with edge/demo/crackforest.gpx)")
        return
    code = subprocess.call([str(BIN / "crack-viewer"), "report", str(out / "recording"), "--out", str(out / "report")],
                           stdout=(out / "report.log").open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    where = out / "report" / "index.html"
    print(f"  report                     {where} (open it in a browser)" if code == 0
          else f"  report                     failed with status {code}; see {out / 'report.log'}")


if __name__ == "__main__":
    sys.exit(main())
