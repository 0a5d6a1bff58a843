"""`make soak`: hours on the road, compressed. Not part of CI.

Runs the real daemon on a looping clip served as a network camera (ffmpeg, MPEG-TS over TCP),
restarts that camera every ``--source-every`` seconds (the daemon must reconnect by itself),
connects a fresh subscriber every ``--viewer-every`` seconds, and samples the daemon's RSS,
open file descriptors and threads from /proc every ``--sample-every`` seconds.

Writes ``soak.csv`` (one row per sample), ``soak.png`` (the three curves) and ``soak.json``
(the verdict and its figures) into ``--out``.  Fails (exit 1) when RSS grows faster than
``--max-rss-mb-per-h`` over the second half, when the fd or thread count of the second half
exceeds the first half's, when the daemon dies, or when masks stop arriving.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain script: `python tools/soak.py`

CSV_FIELDS = ("t_s", "rss_mb", "fds", "threads", "masks_window", "published", "reconnects", "source_state",
              "viewer_connects", "source_restarts")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def proc_figures(pid: int) -> tuple[float, int, int]:
    """(RSS in MB, open fds, threads) of a live process, read from /proc."""
    rss_kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
                break
    return rss_kb / 1024.0, len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


class Camera:
    """ffmpeg serving the clip, looped at its own rate, as MPEG-TS to one TCP client."""

    def __init__(self, clip: Path, port: int, log: Path) -> None:
        self.args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
                     "-an",
                     # Encoded, not copied: a copy with -stream_loop breaks at the loop point
                     # (the header bitstream filter it needs stops at the first EOF).
                     "-c:v", "mpeg4", "-q:v", "5", "-g", "10", "-bf", "0", "-f", "mpegts", f"tcp://127.0.0.1:{port}?listen=1"]
        self.log = open(log, "ab")
        self.proc: subprocess.Popen | None = None
        self.restarts = -1

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        self.restarts += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.log.close()


def slope_per_hour(ts: list[float], ys: list[float]) -> float:
    import numpy as np

    if len(ts) < 3:
        return 0.0
    return float(np.polyfit(np.asarray(ts) / 3600.0, np.asarray(ys), 1)[0])


def verdict(rows: list[dict], max_rss_mb_per_h: float, warmup_s: float) -> dict:
    """Figures and pass/fail from the samples (pure: tested without a daemon)."""
    t_end = rows[-1]["t_s"]
    steady = [r for r in rows if r["t_s"] >= warmup_s] or rows
    half = t_end / 2
    first = [r for r in steady if r["t_s"] < half] or steady[:1]
    second = [r for r in rows if r["t_s"] >= half] or rows[-1:]
    slope = slope_per_hour([r["t_s"] for r in second], [r["rss_mb"] for r in second])
    out = {
        "duration_s": round(t_end, 1), "samples": len(rows),
        "rss_mb_first": round(rows[0]["rss_mb"], 1), "rss_mb_last": round(rows[-1]["rss_mb"], 1),
        "rss_slope_mb_per_h_second_half": round(slope, 2),
        "fds_max_first_half": max(r["fds"] for r in first), "fds_max_second_half": max(r["fds"] for r in second),
        "threads_max_first_half": max(r["threads"] for r in first),
        "threads_max_second_half": max(r["threads"] for r in second),
        "masks_in_last_window": rows[-1]["masks_window"],
        "source_restarts": rows[-1]["source_restarts"], "viewer_connects": rows[-1]["viewer_connects"],
        "daemon_reconnects": rows[-1]["reconnects"],
    }
    failures = []
    if slope > max_rss_mb_per_h:
        failures.append(f"RSS grows {slope:.1f} MB/h over the second half (limit {max_rss_mb_per_h:g})")
    if out["fds_max_second_half"] > out["fds_max_first_half"]:
        failures.append(f"open fds grew: {out['fds_max_first_half']} -> {out['fds_max_second_half']}")
    if out["threads_max_second_half"] > out["threads_max_first_half"]:
        failures.append(f"threads grew: {out['threads_max_first_half']} -> {out['threads_max_second_half']}")
    if not any(r["masks_window"] for r in rows[-3:]):
        failures.append("no masks received in the last three sample windows")
    out["failures"] = failures
    out["result"] = "pass" if not failures else "fail"
    return out


def plot(rows: list[dict], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    axes[0].plot(t, [r["rss_mb"] for r in rows], ".-")
    axes[0].set_ylabel("RSS (MB)")
    axes[0].set_title(f"crack-edge soak, {summary['duration_s'] / 60:.1f} min: RSS slope (2nd half) "
                      f"{summary['rss_slope_mb_per_h_second_half']:+.2f} MB/h, {summary['result']}")
    axes[1].plot(t, [r["fds"] for r in rows], ".-", color="tab:orange")
    axes[1].set_ylabel("open fds")
    axes[2].plot(t, [r["threads"] for r in rows], ".-", color="tab:green")
    axes[2].set_ylabel("threads")
    axes[2].set_xlabel("minutes")
    restarts = [r["t_s"] / 60 for a, r in zip(rows, rows[1:]) if r["source_restarts"] > a["source_restarts"]]
    for ax in axes:
        for x in restarts:
            ax.axvline(x, color="grey", lw=0.5, alpha=0.5)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


class Viewer:
    """A subscriber made like the viewer's (heartbeats, bounded linger), replaced every period."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        from viewer.sockets import subscriber

        self.zmq = zmq
        self.ctx = zmq.Context()
        self.endpoint = endpoint
        self.sock = subscriber(self.ctx, [endpoint])
        self.connects = 1
        self.masks = 0
        self.last_status: dict = {}

    def reconnect(self) -> None:
        from viewer.sockets import subscriber

        self.sock.close(0)
        self.sock = subscriber(self.ctx, [self.endpoint])
        self.connects += 1

    def drain(self, timeout_s: float) -> None:
        from edge import wire

        if not self.sock.poll(int(timeout_s * 1000)):
            return
        while True:
            try:
                frames = self.sock.recv_multipart(self.zmq.NOBLOCK)
            except self.zmq.Again:
                return
            try:
                kind, _, header = wire.decode_header(frames)
            except wire.WireError:
                continue
            if kind == "mask":
                self.masks += 1
            else:
                self.last_status = header

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if shutil.which("ffmpeg") is None:
        print("soak: ffmpeg is needed to serve the clip as a network camera", file=sys.stderr)
        return 2
    model = Path(args.model) if args.model else ROOT / "models" / "mcff-student.onnx"
    if not model.exists():
        if args.model:
            print(f"soak: --model {model}: no such file", file=sys.stderr)
            return 2
        from trainer.export import export_untrained

        model = export_untrained(out / "student-random.onnx")
        print(f"soak: models/mcff-student.onnx absent; random-weight student exported to {model}")
    cam_port, pub_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{pub_port}"
    camera = Camera(Path(args.clip), cam_port, out / "camera.log")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "CRACK_EDGE_SOURCE__RECONNECT_MAX_S": "2"}
    daemon_args = [sys.executable, "-m", "edge.cli", "run", "--source", f"tcp://127.0.0.1:{cam_port}",
                   "--model", str(model), "--backend", args.backend, "--threads", "1", "--publish", endpoint,
                   "--vehicle-id", "soak"]
    if args.inference_size:
        daemon_args += ["--inference-size", args.inference_size]
    camera.start()
    daemon_log = open(out / "daemon.log", "wb")
    daemon = subprocess.Popen(daemon_args, cwd=ROOT, env=env, stdout=daemon_log, stderr=subprocess.STDOUT)
    viewer = Viewer(endpoint)
    rows: list[dict] = []
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    next_sample = t0 + args.sample_every / 2  # out of phase with the restarts below
    next_source = t0 + args.source_every
    next_viewer = t0 + args.viewer_every
    died = None
    stop_early: list[int] = []
    # SIGINT/SIGTERM end the run early, still with a verdict on the samples taken so far.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, f: stop_early.append(s))
    csv_file = open(out / "soak.csv", "w", newline="")
    writer = csv.DictWriter(csv_file, fieldnames=CSV_FIELDS)
    writer.writeheader()
    try:
        while time.monotonic() < end and not stop_early:
            viewer.drain(0.1)
            now = time.monotonic()
            if daemon.poll() is not None:
                died = f"daemon exited with {daemon.returncode}"
                break
            if now >= next_source:
                next_source += args.source_every
                camera.stop()
                camera.start()
            if now >= next_viewer:
                next_viewer += args.viewer_every
                viewer.reconnect()
            if now >= next_sample:
                next_sample += args.sample_every
                rss, fds, threads = proc_figures(daemon.pid)
                st = viewer.last_status
                src = st.get("source", {})
                rows.append({"t_s": round(now - t0, 2), "rss_mb": round(rss, 3), "fds": fds, "threads": threads,
                             "masks_window": viewer.masks, "published": st.get("published", 0),
                             "reconnects": src.get("reconnects", 0), "source_state": src.get("state", ""),
                             "viewer_connects": viewer.connects, "source_restarts": camera.restarts})
                viewer.masks = 0
                writer.writerow(rows[-1])
                csv_file.flush()
                print(f"soak t={now - t0:6.0f}s rss={rss:7.1f}MB fds={fds} threads={threads} "
                      f"masks={rows[-1]['masks_window']} source={rows[-1]['source_state']}", flush=True)
    finally:
        t_stop = time.monotonic()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
                died = died or "daemon did not end within 10 s of SIGTERM"
        stop_s = time.monotonic() - t_stop
        viewer.close()
        camera.close()
        daemon_log.close()
        csv_file.close()
    if len(rows) < 3:
        print(f"soak: too few samples ({len(rows)}); {died or 'run longer'}", file=sys.stderr)
        return 1
    summary = verdict(rows, args.max_rss_mb_per_h, warmup_s=min(60.0, args.minutes * 60 * 0.2))
    summary.update({"sigterm_exit_s": round(stop_s, 2), "exit_code": daemon.returncode, "model": str(model),
                    "clip": str(args.clip), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])})
    if died:
        summary["failures"].append(died)
        summary["result"] = "fail"
    plot(rows, summary, out / "soak.png")
    (out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if summary["result"] == "pass" else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the run (default 30)")
    ap.add_argument("--model", help="ONNX model (default models/mcff-student.onnx, else a random-weight student)")
    ap.add_argument("--clip", default=str(ROOT / "edge" / "demo" / "crackforest.mp4"), help="clip served as the camera")
    ap.add_argument("--backend", default="onnxruntime", help="daemon backend (default onnxruntime)")
    ap.add_argument("--inference-size", help="HxW (default: the model card's)")
    ap.add_argument("--source-every", type=float, default=30.0, help="restart the camera every S seconds")
    ap.add_argument("--viewer-every", type=float, default=10.0, help="reconnect the viewer every S seconds")
    ap.add_argument("--sample-every", type=float, default=10.0, help="sample RSS, fds and threads every S seconds")
    ap.add_argument("--max-rss-mb-per-h", type=float, default=5.0, help="RSS growth limit over the second half")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "crack-soak"),
                    help="folder for soak.csv, soak.png, soak.json and the logs")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
