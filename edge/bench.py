"""``crack-edge bench``: the bare backend against the whole pipeline, on the same frames.

Phase 1 times ``backend.infer`` alone on pre-processed frames.  Phase 2 runs the daemon's own
pipeline (capture thread reading the same source, inference thread, publish thread, a real PUB
socket on loopback with a subscriber draining it) in every-frame mode, so no frame is skipped
and both phases do the same work.  The ratio of the two frame rates is what the pipeline costs.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import EdgeConfig


class MemoryReader:
    """Frames already in memory, as a source (for live sources: captured once, replayed)."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images, self.pos, self.fps = images, 0, None

    def read(self) -> tuple[str, np.ndarray | None]:
        img = self.images[self.pos % len(self.images)]
        self.pos += 1
        return "ok", img

    def close(self) -> None:
        self.images = []


def grab_frames(cfg: EdgeConfig, n: int) -> list[np.ndarray]:
    """n frames of the configured source (looping a short clip), or a clear error."""
    from edge.capture import SKIP, EOS, SourceError, open_reader, parse_source

    src = cfg.source.model_copy(update={"loop": True, "pace": False})
    reader = open_reader(parse_source(cfg.source.uri), src)
    frames: list[np.ndarray] = []
    try:
        for _ in range(n * 4):
            status, frame = reader.read()
            if status == EOS:
                break
            if status != SKIP:
                frames.append(frame)
            if len(frames) == n:
                break
    finally:
        reader.close()
    if not frames:
        raise SourceError(f"{cfg.source.uri}: no frame could be read")
    return frames


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else 0.0


def bench_bare(backend: Any, pre: Any, images: list[np.ndarray], warmup: int) -> dict[str, Any]:
    """Raw figures of one bare round: frames timed, seconds, per-frame ms.

    A backend that runs ``parallel`` frames at once is driven by as many threads, as the
    pipeline drives it, and timed by the wall clock: its bare rate is its best, not one stream's.
    """
    from concurrent.futures import ThreadPoolExecutor

    tensors = [pre(img)[0].copy() for img in images]
    workers = max(1, int(getattr(backend, "parallel", 1) or 1))
    # One input buffer per thread, refilled per frame, as the pipeline's pre-processors do: runtimes
    # that bind the caller's memory must not be charged for a new array each time.
    bufs = [np.empty_like(tensors[0]) for _ in range(workers)]

    def run(worker: int, chunk: list[np.ndarray]) -> list[float]:
        times = []
        for t in chunk:
            np.copyto(bufs[worker], t)
            t0 = time.perf_counter()
            backend.infer(bufs[worker])
            times.append((time.perf_counter() - t0) * 1000.0)
        return times

    def spread(items: list[np.ndarray]) -> list[float]:
        if workers == 1:
            return run(0, items)
        with ThreadPoolExecutor(workers) as pool:
            parts = pool.map(run, range(workers), [items[i::workers] for i in range(workers)])
            return [x for part in parts for x in part]

    spread(tensors[:max(warmup, workers if warmup else 0)])
    t0 = time.perf_counter()
    times = spread(tensors[warmup:])
    return {"n": len(times), "seconds": time.perf_counter() - t0, "lat": times}


def bench_pipeline(cfg: EdgeConfig, model: Any, images: list[np.ndarray], warmup: int) -> dict[str, Any]:
    """The daemon's own Pipeline (built by edge.loader) on a loopback PUB socket drained by a subscriber."""
    import itertools

    import zmq

    from edge import loader
    from edge.capture import CaptureThread, open_reader, parse_source

    ctx = zmq.Context(1)
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, cfg.publish.send_hwm)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, 200)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    received = {"masks": 0, "bytes": 0}
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                frames = sub.recv_multipart()
            except zmq.Again:
                continue
            if frames[0].startswith(b"mask/"):
                received["masks"] += 1
                received["bytes"] += sum(len(f) for f in frames)

    total = len(images)
    pipe = loader.build_pipeline(cfg, model, pub, uuid.uuid4().hex, every=True, max_frames=total,
                                 wait_subscriber_s=5.0)
    spec = parse_source(cfg.source.uri)
    src_cfg = cfg.source.model_copy(update={"loop": True, "pace": False})
    # Files and folders are decoded again by the capture thread (part of the cost); live
    # sources replay the frames grabbed for phase 1.
    opener = (lambda s, c: open_reader(s, c)) if not spec.live else (lambda s, c: MemoryReader(images))
    cap = CaptureThread(spec, src_cfg, pipe.put_frame, itertools.count(), 1, opener)
    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    pipe.start()
    pipe.subscribed.wait(5.0)
    cap.start()
    t_first = t_last = None
    try:
        while not pipe.done.is_set():
            n = pipe.counters.published
            if t_first is None and n >= warmup:
                t_first, n_first = time.perf_counter(), n
            if pipe.failure is not None:
                raise RuntimeError(f"pipeline failed: {pipe.failure}")
            time.sleep(0.002)
        t_last = time.perf_counter()
    finally:  # Ctrl-C included: the threads and sockets go before the caller prints what it has
        cap.stop_event.set()
        pipe.stop(2.0)
        cap.join(2.0)
        stop.set()
        drainer.join(1.0)
        sub.close(0)
        pub.close(0)
        ctx.term()
    return {"n": total - n_first, "seconds": t_last - t_first, "lat": list(pipe.times.latency)[warmup:],
            "stages": {s: list(d)[warmup:] for s, d in pipe.times.ms.items()},
            "sizes": list(pipe.counters.mask_bytes), "received": received["masks"], "drops": pipe.drops}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds merged: frame rate over all timed frames, percentiles over all latencies."""
    n, secs = sum(r["n"] for r in runs), sum(r["seconds"] for r in runs)
    lat = [x for r in runs for x in r["lat"]]
    out: dict[str, Any] = {"fps": round(n / secs, 3) if secs > 0 else 0.0,
                           "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}
    if "stages" in runs[0]:
        out["stages_ms"] = {s: round(float(np.mean(v)), 3) if (v := [x for r in runs for x in r["stages"][s]]) else 0.0
                            for s in runs[0]["stages"]}
        sizes = [x for r in runs for x in r["sizes"]]
        out["message_bytes"] = int(np.mean(sizes)) if sizes else 0
        out["received"] = sum(r["received"] for r in runs)
        out["drops"] = {k: sum(r["drops"][k] for r in runs) for k in runs[0]["drops"]}
    return out


def run_one(cfg: EdgeConfig, frames: int, warmup: int, rounds: int = 2) -> dict[str, Any]:
    """Bare and pipeline phases alternated ``rounds`` times, so a CPU shared with others loads both alike."""
    import cv2

    from edge import loader

    cv2.setNumThreads(cfg.pipeline.cv2_threads)
    model = loader.load_model(cfg)
    backend, path, card, size = model.backend, model.path, model.card, model.size
    rounds = max(1, min(rounds, frames))
    per = -(-frames // rounds)
    want = per + warmup
    images = grab_frames(cfg, want)
    images = (images * (-(-want // len(images))))[:want]
    pre = model.preprocessor()
    bare_runs, pipe_runs = [], []
    for r in range(rounds):
        # Later rounds need no runtime warm-up; one frame still fills the pipeline's queues.
        skip = warmup if r == 0 else 1
        frames_r = images[warmup - skip:]
        # Counterbalanced order (bare first, then pipeline first, ...): drift in the machine's load
        # must not favour one phase.
        if r % 2 == 0:
            bare_runs.append(bench_bare(backend, pre, frames_r, skip))
            pipe_runs.append(bench_pipeline(cfg, model, frames_r, skip))
        else:
            pipe_runs.append(bench_pipeline(cfg, model, frames_r, skip))
            bare_runs.append(bench_bare(backend, pre, frames_r, skip))
    bare, pipe = summary(bare_runs), summary(pipe_runs)
    info = backend.describe()
    backend.close()
    h, w = images[0].shape[:2] if size == "native" else size
    return {
        "backend": backend.name, "precision": info.get("precision") or card.precision,
        "model_precision": card.precision,
        "threads": cfg.backend.threads, "parallel": int(getattr(backend, "parallel", 1) or 1),
        "model": str(path), "source": cfg.source.uri, "size": f"{h}x{w}",
        "frames": sum(r["n"] for r in bare_runs), "rounds": rounds, "bare": bare, "pipeline": pipe,
        "ratio": round(pipe["fps"] / bare["fps"], 3) if bare["fps"] else 0.0,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2)}


def default_choice(cfg: EdgeConfig) -> tuple[str, str] | None:
    """(backend, model file name) the daemon runs with this config's backend and precision."""
    from edge.backends.base import BackendError, resolve_name
    from edge.loader import StartupError, choose_model_file, model_and_card

    try:
        name = resolve_name(cfg.backend.name)
        path, card = choose_model_file(name, cfg, *model_and_card(cfg))
    except (BackendError, StartupError):
        return None
    return name, Path(path).name


def mark_default(results: list[dict[str, Any]], choice: tuple[str, str] | None) -> None:
    """Flag the row the daemon's own choice produced (its file at its card's precision)."""
    for r in results:
        r["default"] = False
    if choice is None:
        return
    for r in results:
        if (r["backend"], Path(r["model"]).name) == choice and r["precision"] == r["model_precision"]:
            r["default"] = True
            return


def targets(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The CPU targets of docs/cpu-inference.md, from this one run: the default row's pipeline
    against bare ONNX Runtime fp32, and against the fastest bare runtime present."""
    default = next((r for r in results if r.get("default")), None)
    ort = next((r for r in results if r["backend"] == "onnxruntime" and r["precision"] == "fp32"), None)
    if default is None or not results:
        return {}
    fastest = max(results, key=lambda r: r["bare"]["fps"])
    out: dict[str, Any] = {"default": f"{default['backend']} {default['precision']} {Path(default['model']).name}",
                           "default_pipeline_fps": default["pipeline"]["fps"],
                           "fastest_bare": f"{fastest['backend']} {fastest['precision']}",
                           "fastest_bare_fps": fastest["bare"]["fps"],
                           "vs_fastest_bare": round(default["pipeline"]["fps"] / fastest["bare"]["fps"], 3)}
    if ort is not None and ort["bare"]["fps"]:
        out["onnxruntime_fp32_bare_fps"] = ort["bare"]["fps"]
        out["vs_onnxruntime_fp32_bare"] = round(default["pipeline"]["fps"] / ort["bare"]["fps"], 3)
    return out


def table(results: list[dict[str, Any]], mach: dict[str, Any]) -> str:
    lines = [f"machine: {mach['cpu']}, {mach['cores']} cores, load {mach['load_1min']} at start"]
    head = (f"{'backend':<12} {'prec':<5} {'par':>3} {'size':<9} {'bare fps':>8} {'pipe fps':>8} {'ratio':>6} "
            f"{'bare p50':>8} {'bare p99':>8} {'pipe p50':>8} {'pipe p99':>8} {'msg B':>7} {'RSS MB':>7}")
    lines += [head, "-" * len(head)]
    for r in results:
        b, p = r["bare"], r["pipeline"]
        name = ("*" if r.get("default") else "") + r["backend"]
        lines.append(f"{name:<12} {r['precision']:<5} {r['parallel']:>3} {r['size']:<9} {b['fps']:>8.2f} {p['fps']:>8.2f} "
                     f"{r['ratio']:>6.2f} {b['p50_ms']:>8.1f} {b['p99_ms']:>8.1f} {p['p50_ms']:>8.1f} "
                     f"{p['p99_ms']:>8.1f} {p['message_bytes']:>7d} {r['peak_rss_mb']:>7.1f}")
    for r in results:
        stages = "  ".join(f"{k} {v:.2f}" for k, v in r["pipeline"]["stages_ms"].items())
        lines.append(f"stages ms ({r['backend']} {r['precision']}): {stages}")
    lines.append("par: frames inferred at once (backend.streams); pipe p50/p99: capture to sent, every-frame mode "
                 "(includes the wait for the model)")
    t = targets(results)
    if t:
        lines.append(f"* the daemon's choice with this config: {t['default']}, pipeline {t['default_pipeline_fps']:.2f} fps "
                     f"= {t['vs_fastest_bare']:.2f} of the fastest bare ({t['fastest_bare']}, {t['fastest_bare_fps']:.2f})"
                     + (f", {t['vs_onnxruntime_fp32_bare']:.2f}x bare onnxruntime fp32 ({t['onnxruntime_fp32_bare_fps']:.2f})"
                        if "vs_onnxruntime_fp32_bare" in t else ""))
    return "\n".join(lines)


def precision_pairs(cfg: EdgeConfig) -> list[EdgeConfig]:
    """One config per backend x precision present: the configured model, and its INT8 sibling if any.

    ONNX Runtime runs each file at the file's own precision; OpenVINO adds bf16 where the CPU
    has it; other runtimes get one row at the configured precision.
    """
    from edge.backends.base import available_backends, backend_class
    from models.card import int8_sibling

    fp32 = Path(cfg.model.path)
    int8 = int8_sibling(fp32)
    out = []
    for name in available_backends():
        if name == "onnxruntime":
            rows = [("fp32", fp32)] + ([("int8", int8)] if int8 and int8 != fp32 else [])
        elif hasattr(backend_class(name), "precisions_here"):
            here = backend_class(name).precisions_here()
            rows = [(p, fp32) for p in here if p != "int8"] + ([("int8", int8)] if int8 and "int8" in here else [])
        else:
            rows = [(cfg.backend.precision, fp32)]
        for precision, model in rows:
            out.append(cfg.model_copy(update={
                "backend": cfg.backend.model_copy(update={"name": name, "precision": precision}),
                "model": cfg.model.model_copy(update={"path": model})}))
    return out


def main(cfg: EdgeConfig, frames: int = 40, warmup: int = 3, as_json: bool = False, all_backends: bool = False,
         rounds: int = 2) -> int:
    import sys

    from common import exits
    from edge.capture import SourceError
    from edge.loader import StartupError

    # Without --all: the config as the daemon would run it (the INT8 sibling included, when chosen).
    configs = precision_pairs(cfg) if all_backends else [cfg]
    mach = machine()
    results: list[dict[str, Any]] = []
    code = exits.OK
    i, what = 0, ""
    try:
        for i, one in enumerate(configs, 1):
            what = f"{one.backend.name} {one.backend.precision or 'default'}"
            # Progress on stderr (stdout is the table or the JSON): a row takes a minute on a small CPU.
            print(f"bench {i}/{len(configs)}: {what} ...", file=sys.stderr, flush=True)
            try:
                row = run_one(one, frames, warmup, rounds)
            except StartupError as e:
                print(f"crack-edge bench: {e}", file=sys.stderr)
                return e.code
            except SourceError as e:
                print(f"crack-edge bench: source.uri: {e}", file=sys.stderr)
                return exits.NOINPUT
            results.append(row)
            print(f"bench {i}/{len(configs)}: {what}: bare {row['bare']['fps']:.2f} fps, "
                  f"pipeline {row['pipeline']['fps']:.2f} fps", file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # what was measured is kept: the finished rows are printed below
        print(f"crack-edge bench: interrupted during row {i} of {len(configs)} ({what}); "
              f"the {len(results)} finished row(s) follow", file=sys.stderr)
        code = exits.INTERRUPTED
    if not results:
        return code
    mark_default(results, default_choice(cfg))
    if as_json:
        print(json.dumps({"machine": mach, "results": results, "targets": targets(results),
                          **({"interrupted": True} if code else {})}, indent=2))
    else:
        print(table(results, mach))
    return code
