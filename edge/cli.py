"""``crack-edge run | check | bench | keys``.

Only argparse at import time: ``crack-edge --help`` must answer at once on a Jetson, so the
config, OpenCV and the runtimes are imported inside the commands.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

EXIT_CANTCREAT = 73
EXIT_CONFIG = 78


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file (flags > CRACK_EDGE_* env > file)")
    p.add_argument("--source", "-s", metavar="URI", help="camera index, /dev/videoN, GStreamer pipeline, rtsp://..., video file or folder")
    p.add_argument("--model", "-m", metavar="PATH", help="ONNX model (card NAME.json beside it) or TensorRT .engine")
    p.add_argument("--backend", "-b", metavar="NAME", help="auto, tensorrt, openvino or onnxruntime")
    p.add_argument("--threads", type=int, metavar="N", help="runtime CPU threads (0: runtime default)")
    p.add_argument("--precision", metavar="P", help=(
        "fp32, fp16, bf16 or int8 (default: the model's own, or its INT8 sibling on a CPU runtime)"))
    p.add_argument("--streams", type=int, metavar="N", help="frames inferred at once (OpenVINO; 0: auto)")
    p.add_argument("--inference-size", metavar="HxW", help="e.g. 448x448, or 'native' (frame size padded to a multiple of 4)")
    p.add_argument("--vehicle-id", metavar="ID", help="name in topics mask/<ID> and status/<ID> (default: host name)")
    p.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crack-edge", description=(
        "Edge daemon: camera -> MCFF-L Net -> crack masks on a ZeroMQ PUB socket (see docs/protocol.md)."))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the daemon (under systemd: Type=notify)")
    _common(run)
    run.add_argument("--publish", "-p", metavar="ENDPOINT", help="ZeroMQ endpoint to bind (default tcp://127.0.0.1:5555)")
    run.add_argument("--max-frames", type=int, metavar="N", help="stop after publishing N masks")
    run.add_argument("--mode", choices=["auto", "every", "latest"], help="every frame (files) or latest frame wins (cameras)")
    loop = run.add_mutually_exclusive_group()
    loop.add_argument("--loop", dest="loop", action="store_true", default=None, help="restart files and folders at their end")
    loop.add_argument("--no-loop", dest="loop", action="store_false", help="stop at the end of a file or folder")
    run.add_argument("--pace", action="store_true", default=None, help="read files at their own frame rate (camera emulation)")
    run.add_argument("--position", metavar="KIND", help="position source: none, gpsd, nmea-serial, nmea-log, gpx-log, exif, fixed")
    run.add_argument("--record", metavar="DIR", help="append every published message to recordings in DIR")
    run.add_argument("--wait-subscriber", type=float, metavar="S", help="wait up to S seconds for a first subscriber before reading")
    run.add_argument("--no-frame", dest="frame_jpeg", action="store_false", default=None, help="do not attach the JPEG frame")

    check = sub.add_parser("check", help="validate the config and load the model, then exit (0 good, 78 bad)")
    _common(check)

    bench = sub.add_parser("bench", help="bare backend FPS vs whole-pipeline FPS on the same frames")
    _common(bench)
    bench.add_argument("--frames", type=int, default=40, metavar="N", help="frames timed in each phase (default 40)")
    bench.add_argument("--size", metavar="HxW", help="inference size (default: the card's input_size)")
    bench.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed frames first (default 3)")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    bench.add_argument("--all", action="store_true", help="every backend present, one row each")
    bench.add_argument("--rounds", type=int, default=2, metavar="R",
                       help="alternate bare and pipeline phases R times (a shared CPU then loads both alike)")

    keys = sub.add_parser("keys", help="create CurveZMQ key pairs: the daemon's and one per viewer (docs/security.md)")
    keys.add_argument("--out", required=True, metavar="DIR", help=(
        "folder for daemon.key (public) and daemon.key_secret; viewers' pairs go to DIR/viewers/"))
    keys.add_argument("--viewer", action="append", default=[], type=_key_name, metavar="NAME",
                      help="also create the pair NAME.key / NAME.key_secret for a viewer, repeatable")
    return parser


def _key_name(name: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise argparse.ArgumentTypeError(f"{name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags given on the command line, as nested config keys."""
    from edge.config import nested

    get = lambda name: getattr(args, name, None)  # noqa: E731 - sub-commands have different flags
    flat = {
        "source.uri": get("source"), "model.path": get("model"), "backend.name": get("backend"),
        "backend.threads": get("threads"), "backend.precision": get("precision"),
        "backend.streams": get("streams"),
        "model.inference_size": get("size") or get("inference_size"), "vehicle_id": get("vehicle_id"),
        "log_level": get("log_level").upper() if get("log_level") else None,
        "publish.endpoint": get("publish"), "pipeline.max_frames": get("max_frames"), "source.mode": get("mode"),
        "source.loop": get("loop"), "position.kind": get("position"), "source.pace": get("pace"), "publish.wait_subscriber_s": get("wait_subscriber"),
        "publish.frame_jpeg": get("frame_jpeg"),
    }
    if get("record"):
        flat.update({"record.enabled": True, "record.directory": get("record")})
    return nested(flat)


def setup_logging(level: str) -> None:
    # Under systemd the journal stamps time and unit itself.
    fmt = "%(levelname)s %(name)s %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)


def load(args: argparse.Namespace) -> Any:
    from edge.config import ConfigError, load_config

    try:
        return load_config(args.config, overrides(args))
    except ConfigError as e:
        print(f"crack-edge: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load(args)
    setup_logging(cfg.log_level)
    from edge.daemon import run

    return run(cfg)


def cmd_check(args: argparse.Namespace) -> int:
    cfg = load(args)
    setup_logging(cfg.log_level)
    from edge.daemon import StartupError, build_backend, inference_size, model_and_card

    from edge.capture import parse_source

    try:
        spec = parse_source(cfg.source.uri)
        path, card = model_and_card(cfg)
        backend = build_backend(cfg, path, card)
        path, card = backend.model_path, backend.card  # what runs: maybe an engine's ONNX or an INT8 sibling
    except ValueError as e:
        print(f"crack-edge: source.uri: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as e:
        print(f"crack-edge: {e}", file=sys.stderr)
        return e.code
    import numpy as np

    size = inference_size(cfg, card)
    h, w = (card.input_size if size == "native" else size)
    out = backend.infer(np.zeros((1, 3, h, w), np.float32))
    info = backend.describe()
    backend.close()
    if out.shape != (1, 1, h, w):
        print(f"crack-edge: model.path: {path}: output shape {out.shape}, expected (1, 1, {h}, {w})", file=sys.stderr)
        return EXIT_CONFIG
    present = spec.kind not in ("file", "folder") or os.path.exists(spec.target)
    print(f"config ok: vehicle_id={cfg.vehicle_id} endpoint={cfg.publish.endpoint}")
    print(f"model ok: {path} backend={backend.name} precision={info.get('precision') or card.precision} "
          f"size={size} threshold={cfg.model.threshold or card.threshold}")
    print(f"source: {spec.kind} {spec.target}" + ("" if present else " (not present now: the daemon will retry)"))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    cfg = load(args)
    setup_logging("WARNING" if cfg.log_level == "INFO" else cfg.log_level)
    from edge.bench import main as bench_main

    return bench_main(cfg, frames=args.frames, warmup=args.warmup, as_json=args.json, all_backends=args.all,
                      rounds=args.rounds)


def cmd_keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge.security import SecurityError, create_keys

    try:
        made = create_keys(Path(args.out), args.viewer)
    except SecurityError as e:
        print(f"crack-edge: {e}", file=sys.stderr)
        return EXIT_CANTCREAT
    for public, created in made:
        state = "created" if created else "exists, kept"
        print(f"{state}: {public} (public) + {public.name}_secret (secret, mode 600)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"run": cmd_run, "check": cmd_check, "bench": cmd_bench, "keys": cmd_keys}[args.command](args)
    except KeyboardInterrupt:  # `run` handles its own signals; this is Ctrl-C anywhere else
        print(f"crack-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
