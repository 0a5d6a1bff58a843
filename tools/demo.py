"""`make demo`: the whole system on this machine, ending by itself.

Calibrates the bundled clip's ground plane (`crack-edge calibrate` on edge/demo/ground-points.csv)
into a config that also names its GPS track (edge/demo/crackforest.gpx, a `gpx-log` position
source), starts the edge daemon on the clip with the released model (CPU), a viewer that shows
the live overlay (a window when a display is present, PNG files otherwise) and a recorder, then
prints what happened, measured from the recording (frames, fps, latency, cracks in metres and
millimetres), and ends with the inspection report (`crack-viewer report`): out/demo/report/index.html.
No camera, GPU or network needed: everything runs on loopback.
"""
from __future__ import annotations

import argparse
import csv
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
DEMO = ROOT / "edge" / "demo"
# The clip's first frame is at the track's first point (docs/report.md, "The demo's track").
TRACK_START = "2024-05-01T10:00:00Z"
CLIP_SIZE = "480x320"


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
        **ground_figures(h),
    }


def ground_figures(headers: list[dict]) -> dict:
    """What the calibration and the GPS track add: figures on the road, crack types, fixes."""
    grounds = [x["ground"] for x in headers if x.get("calibrated") and x.get("ground")]
    cracks = [c for x in headers for c in x.get("cracks") or []]
    types: dict[str, int] = {}
    for c in cracks:
        types[c["type"]] = types.get(c["type"], 0) + 1
    out = {"calibrated": bool(grounds), "frames_with_fix": sum(1 for x in headers if (x.get("position") or {}).get("fix"))}
    if grounds:
        out.update({
            "crack_length_m_per_frame": round(statistics.mean(g["crack_length_m"] for g in grounds), 3),
            "widest_crack_mm": round(max(g["crack_max_width_mm"] for g in grounds), 1),
            "surveyed_m2_per_frame": round(statistics.mean(g["surveyed_area_m2"] for g in grounds), 4),
            "crack_observations_by_type": dict(sorted(types.items())),
        })
    return out


def write_config(out: Path) -> Path:
    """The daemon's config for the demo: the GPX track as position source, then `crack-edge calibrate`
    puts the ground calibration into it, as an inspector would on a vehicle."""
    cfg = out / "crack-edge.toml"
    cfg.write_text("# Written by tools/demo.py: the demo clip's GPS track; [ground] below by crack-edge calibrate\n"
                   "[position]\n"
                   'kind = "gpx-log"\n'
                   f"path = {json.dumps(str(DEMO / 'crackforest.gpx'))}\n"
                   f'start_time = "{TRACK_START}"\n')
    code = subprocess.call([str(BIN / "crack-edge"), "calibrate", "--points", str(DEMO / "ground-points.csv"),
                            "--image-size", CLIP_SIZE, "--write", str(cfg)],
                           stdout=(out / "calibrate.log").open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"demo: crack-edge calibrate failed with status {code}; see {out / 'calibrate.log'}")
    return cfg


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

    cfg = write_config(out)
    print(f"demo: calibrated the clip's road plane into {cfg} (crack-edge calibrate, see {out / 'calibrate.log'})")
    print(f"demo: daemon on {endpoint}, viewer {'in a window' if windowed else 'headless'}; logs in {out}")
    recorder = spawn([str(BIN / "crack-viewer"), "record", "--connect", endpoint, "--out", str(out / "recording"),
                      "--duration", str(args.timeout)], out / "recorder.log")
    viewer = spawn(viewer_cmd, out / "viewer.log")
    # The daemon waits for its first subscriber so the viewer sees the clip from its first frame.
    # --pace: frames at the clip's 10 fps, as a camera would give them (latency and fps figures).
    # Positions do not depend on it: each frame is placed on the GPS track by its time in the clip.
    daemon = spawn([str(BIN / "crack-edge"), "run", "--config", str(cfg), "--publish", endpoint,
                    "--max-frames", str(args.frames), "--no-loop", "--pace", "--wait-subscriber", "10",
                    "--vehicle-id", "demo-van"]
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
    if code != 0:
        print(f"  report                     failed with status {code}; see {out / 'report.log'}")
        return
    print(f"  report                     {where} (open it in a browser)")
    with (out / "report" / "segments.csv").open() as fh:
        for row in csv.DictReader(fh):
            pct = row["cracked_pct"] or "-"
            print(f"    {row['from_m']:>6}-{row['to_m']:<6} m  {row['condition']:13s} cracked {pct} %  "
                  f"length {row['crack_length_m']} m  widest {row['max_width_mm']} mm  "
                  f"surveyed {row['surveyed_area_m2']} m2")


if __name__ == "__main__":
    sys.exit(main())
