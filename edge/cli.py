"""``crack-edge run | check | bench | keys | calibrate``.

Only argparse at import time: ``crack-edge --help`` must answer at once on a Jetson, so the
config, OpenCV and the runtimes are imported inside the commands.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from common import exits


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
    run.add_argument("--history", metavar="ENDPOINT", help=(
        "serve the recording to viewers that missed masks on ENDPOINT (a ROUTER socket; needs --record)"))
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

    reload = sub.add_parser("reload", help="SIGHUP the daemon and wait for its answer (systemd ExecReload=)")
    reload.add_argument("--pid", type=int, required=True, metavar="PID", help="the daemon's process id ($MAINPID)")
    reload.add_argument("--timeout", type=float, default=10.0, metavar="S", help="how long to wait for the answer")

    keys = sub.add_parser("keys", help="create CurveZMQ key pairs: the daemon's and one per viewer (docs/security.md)")
    keys.add_argument("--out", required=True, metavar="DIR", help=(
        "folder for daemon.key (public) and daemon.key_secret; viewers' pairs go to DIR/viewers/"))
    keys.add_argument("--viewer", action="append", default=[], type=_key_name, metavar="NAME",
                      help="also create the pair NAME.key / NAME.key_secret for a viewer, repeatable")

    cal = sub.add_parser("calibrate", help=(
        "ground-plane homography from road points or a checkerboard -> the [ground] section (docs/edge.md)"))
    given = cal.add_mutually_exclusive_group(required=True)
    given.add_argument("--points", metavar="FILE", help="file of 'u v x y' lines: pixel, and road position in metres")
    given.add_argument("--point", action="append", metavar="U,V,X,Y", help="one point (repeat, at least 4)")
    given.add_argument("--checkerboard", metavar="IMAGE", help="a frame showing a checkerboard laid flat on the road")
    cal.add_argument("--image-size", metavar="WxH", help="size of the frame the points were read on")
    cal.add_argument("--image", metavar="FRAME", help="a frame of the camera, for its size (instead of --image-size)")
    cal.add_argument("--pattern", metavar="COLSxROWS", help="checkerboard inner corners, e.g. 9x6")
    cal.add_argument("--square-mm", type=float, metavar="MM", help="checkerboard square side, mm")
    cal.add_argument("--board-origin", metavar="X,Y", help="road position (m) of the board's nearest-left inner corner")
    cal.add_argument("--forward", choices=["+y", "-y", "+x", "-x"], default="+y",
                     help="which axis of the points' road coordinates is the driving direction (default +y)")
    cal.add_argument("--max-range-m", type=float, default=20.0, metavar="M",
                     help="road beyond this distance is not measured (default 20)")
    cal.add_argument("--max-error-m", type=float, default=0.05, metavar="M",
                     help="refuse a fit that misses a point by more than this (default 0.05)")
    cal.add_argument("--write", metavar="CONFIG", help="put the [ground] section into this TOML config (else print it)")
    cal.add_argument("--preview", metavar="PNG", help=(
        "also write the frame (--image or --checkerboard) seen from above with a 10 cm grid, to check by eye"))
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
        "publish.frame_jpeg": get("frame_jpeg"), "history.endpoint": get("history"),
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
        sys.exit(exits.CONFIG)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load(args)
    setup_logging(cfg.log_level)
    from edge.daemon import run

    return run(cfg)


def cmd_check(args: argparse.Namespace) -> int:
    """Every check ``run`` makes before READY, in the same order, through the same loader; nothing is bound."""
    cfg = load(args)
    setup_logging(cfg.log_level)
    from edge import loader

    model = None
    try:
        spec = loader.source_spec(cfg)
        loader.check_security(cfg)
        position = loader.open_position_source(cfg)  # a log that misses the video is refused here too
        model = loader.load_model(cfg)
        loader.probe_model(model)
        info = model.backend.describe()
        shape = loader.probe_source(cfg, spec)
        ground = _check_ground(cfg)
    except loader.StartupError as e:
        print(f"crack-edge: {e}", file=sys.stderr)
        return e.code
    finally:
        if model is not None:
            model.close()
    print(f"config ok: vehicle_id={cfg.vehicle_id} endpoint={cfg.publish.endpoint} "
          f"security={'curve' if cfg.security.enabled else 'none'} history={cfg.history.endpoint or 'none'}")
    print(f"model ok: {model.path} backend={model.backend.name} precision={info.get('precision') or model.card.precision} "
          f"size={model.size} threshold={model.threshold}")
    print(f"source ok: {spec.kind} {spec.target} frame={shape[1]}x{shape[0]}")
    print(f"position ok: {cfg.position.kind}" + ("" if position is None else f" ({type(position).__name__})"))
    if ground is None:
        print("ground: not calibrated: measures in pixels only (crack-edge calibrate)")
    else:
        w, h = ground.image_size
        fits = ground.fits(shape[1], shape[0])
        print(f"ground ok: calibrated at {w}x{h}" + ("" if fits else f"; the source's {shape[1]}x{shape[0]} "
              "frames have another aspect, so they are measured in pixels only"))
    return exits.OK


def _check_ground(cfg: Any) -> Any:
    """The calibration ``run`` would measure with (None without one); a bad one stops like ``run``."""
    from edge import loader
    from edge.measure import Ground, GroundError

    try:
        return Ground.from_config(cfg.ground)
    except GroundError as e:
        raise loader.StartupError(f"ground: {e}", exits.CONFIG) from None


def cmd_bench(args: argparse.Namespace) -> int:
    cfg = load(args)
    setup_logging("WARNING" if cfg.log_level == "INFO" else cfg.log_level)
    from edge.bench import main as bench_main

    return bench_main(cfg, frames=args.frames, warmup=args.warmup, as_json=args.json, all_backends=args.all,
                      rounds=args.rounds)


def cmd_reload(args: argparse.Namespace) -> int:
    from edge.reload import request

    code, message = request(args.pid, args.timeout)
    print(f"crack-edge reload: {message}", file=sys.stderr if code else sys.stdout)
    return code


def cmd_keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge.security import SecurityError, create_keys

    try:
        made = create_keys(Path(args.out), args.viewer)
    except SecurityError as e:
        print(f"crack-edge: {e}", file=sys.stderr)
        return exits.CANTCREAT
    for public, created in made:
        state = "created" if created else "exists, kept"
        print(f"{state}: {public} (public) + {public.name}_secret (secret, mode 600)")
    return exits.OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from edge.calibrate import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"run": cmd_run, "check": cmd_check, "bench": cmd_bench, "keys": cmd_keys,
                "reload": cmd_reload, "calibrate": cmd_calibrate}[args.command](args)
    except KeyboardInterrupt:  # `run` handles its own signals; this is Ctrl-C anywhere else
        print(f"crack-edge {args.command}: interrupted", file=sys.stderr)
        return exits.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
