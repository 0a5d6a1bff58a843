"""`crack-viewer watch|record|replay|relay|verify|bench`: parse flags, load the config, run one app.

Only argparse is imported before the flags are parsed, so ``--help`` answers at once.
Exit statuses: 0 done, 1 unexpected failure, 2 usage, 65 a file that is not a recording,
66 a recording that does not exist, 69 an endpoint that cannot be bound, 71 no display for the
window, 73 an output folder that cannot be created, 74 a recording that cannot be written (disk
full...), 77 refused by every endpoint's CurveZMQ handshake, 78 bad configuration
(common/exits.py holds them all).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from common import exits

log = logging.getLogger("viewer")


def _common(p: argparse.ArgumentParser, connect: bool = True) -> None:
    p.add_argument("--config", metavar="TOML", help="settings file (flags > CRACK_VIEWER_* env > TOML)")
    if connect:
        p.add_argument("--connect", action="append", metavar="ENDPOINT",
                       help="daemon or relay endpoint, repeatable (default tcp://127.0.0.1:5555)")
        p.add_argument("--subscribe", action="append", metavar="PREFIX",
                       help="topic prefix to subscribe to, repeatable (default: everything)")
        p.add_argument("--stale-after", type=float, metavar="S", help="seconds of silence before a vehicle is stale")
        p.add_argument("--server-key", action="append", metavar="FILE", help=(
            "public certificate of the daemon or relay (daemon.key): CurveZMQ; repeatable, one per --connect"))
        p.add_argument("--key", metavar="FILE", help="this viewer's own secret certificate (NAME.key_secret)")
    p.add_argument("--event-loop", choices=["auto", "asyncio", "uvloop"], help="asyncio loop (default auto: uvloop)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--validate-config", action="store_true", help="print the resulting settings and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crack-viewer", description="Watch, record, replay and relay crack-inspection streams.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    w = sub.add_parser("watch", help="live overlay of one or many vehicles (window, or --headless files)")
    _common(w)
    w.add_argument("--headless", action="store_true", default=None, help="render to files instead of a window")
    w.add_argument("--out", metavar="DIR", help="headless output folder")
    w.add_argument("--format", choices=["png", "mp4"], help="headless output: PNG per frame (default) or one MP4")
    w.add_argument("--count", type=int, metavar="N", help="stop after N mask messages")
    w.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    w.add_argument("--tile-width", type=int, metavar="PX", help="width of each vehicle's tile")
    w.add_argument("--columns", type=int, metavar="N", help="tiles per row")
    w.add_argument("--refresh-hz", type=float, metavar="HZ", help="window repaint rate")
    w.add_argument("--snapshot-dir", metavar="DIR", help="where the s key saves PNG snapshots")
    w.add_argument("--title", help="window title")
    w.add_argument("--no-backfill", dest="backfill", action="store_false", default=None,
                   help="do not ask the vehicle's history service for the masks missed (figures count them)")

    r = sub.add_parser("record", help="write every message verbatim to a rotated, crash-safe recording")
    _common(r)
    r.add_argument("--out", metavar="DIR", help="recording folder (files <prefix>-NNNNNN.crec)")
    r.add_argument("--prefix", help="file name prefix (default rec)")
    r.add_argument("--count", type=int, metavar="N", help="stop after N messages (any kind)")
    r.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    r.add_argument("--max-file-mb", type=float, metavar="MIB", help="rotate files past this size")
    r.add_argument("--max-total-mb", type=float, metavar="MIB", help="delete the oldest files past this total")
    r.add_argument("--no-backfill", dest="backfill", action="store_false", default=None,
                   help="do not ask the vehicle's history service for the masks missed")

    p = sub.add_parser("replay", help="publish a recording byte for byte with its original timing")
    _common(p, connect=False)
    p.add_argument("file", nargs="?", metavar="FILE", help="a .crec file or a recording folder")
    p.add_argument("--bind", metavar="ENDPOINT", help="endpoint to publish on (default tcp://127.0.0.1:5555)")
    p.add_argument("--speed", type=float, metavar="X", help="time factor (2 = twice as fast)")
    p.add_argument("--loop", action="store_true", default=None, help="start again at the end")
    p.add_argument("--wait-subscriber", type=float, metavar="S", help="wait up to S s for a subscriber (default 5)")
    p.add_argument("--sndhwm", type=int, metavar="N", help="messages queued per subscriber")

    x = sub.add_parser("relay", help="forward many daemons to many viewers (XSUB/XPUB proxy)")
    _common(x)
    x.add_argument("--bind", metavar="ENDPOINT", help="endpoint viewers connect to (default tcp://127.0.0.1:5556)")
    x.add_argument("--authorized-keys", metavar="DIR", help=(
        "folder of viewers' public certificates: the relay's XPUB becomes a CurveZMQ server with --key"))
    x.add_argument("--allow-insecure", action="store_true", default=None,
                   help="relay in the clear on a non-loopback --bind without keys")

    v = sub.add_parser("verify", help="count each file's good, damaged and torn records; --repair copies the good ones")
    v.add_argument("recording", metavar="RECORDING", help="a .crec file or a recording folder")
    v.add_argument("--repair", metavar="OUT", help="write every good record into the new recording folder OUT")
    v.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default="WARNING")

    rp = sub.add_parser("report", help="inspection report: segments, GeoJSON, CSV, chart, offline HTML map")
    rp.add_argument("recordings", nargs="+", metavar="RECORDING", help="recording folders or .crec files")
    rp.add_argument("--out", required=True, metavar="DIR", help="report folder")
    rp.add_argument("--segment-m", type=float, default=10.0, metavar="M", help="segment length (default 10)")

    b = sub.add_parser("bench", help="decode throughput on one core (messages/s)")
    b.add_argument("--seconds", type=float, default=2.0, help="seconds per case")
    return parser


def _flags(a: argparse.Namespace) -> dict[str, Any]:
    g = vars(a).get
    flags: dict[str, Any] = {
        "config": g("config"), "connect": g("connect"), "subscribe": g("subscribe"),
        "stale_after_s": g("stale_after"), "loop": g("event_loop"), "log_level": g("log_level"),
        "server_key": g("server_key"), "key": g("key"),
    }
    if a.command == "watch":
        flags["watch"] = {"headless": a.headless, "out": a.out, "format": a.format, "count": a.count,
                          "duration": a.duration, "tile_width": a.tile_width, "columns": a.columns,
                          "refresh_hz": a.refresh_hz, "snapshot_dir": a.snapshot_dir, "title": a.title,
                          "backfill": a.backfill}
    elif a.command == "record":
        flags["record"] = {"out": a.out, "prefix": a.prefix, "count": a.count, "duration": a.duration,
                           "max_file_mb": a.max_file_mb, "max_total_mb": a.max_total_mb,
                           "backfill": a.backfill}
    elif a.command == "replay":
        flags["replay"] = {"file": a.file, "bind": a.bind, "speed": a.speed, "loop": a.loop,
                           "wait_subscriber_s": a.wait_subscriber, "sndhwm": a.sndhwm}
    elif a.command == "relay":
        flags["relay"] = {"bind": a.bind, "authorized_keys": a.authorized_keys, "allow_insecure": a.allow_insecure}
    return flags


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from viewer.bench import main as bench_main

        return bench_main(args.seconds)
    if args.command == "verify":
        return _verify(args)

    if args.command == "report":
        from viewer.report.cli import run_report

        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
        try:
            return run_report(args.recordings, args.out, args.segment_m)
        except KeyboardInterrupt:
            return 130

    from viewer.config import ConfigError, load_config

    try:
        cfg = load_config(_flags(args))
        cfg.require(args.command)
    except ConfigError as e:
        print(f"crack-viewer: configuration error: {e}", file=sys.stderr)
        return exits.CONFIG
    logging.basicConfig(level=cfg.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.validate_config:
        print(cfg.model_dump_json(indent=2))
        return exits.OK
    try:
        return _run(args.command, cfg)
    except KeyboardInterrupt:
        return exits.INTERRUPTED


def _verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from common import exits
    from edge.recording import RecordingError, RecordingNotFound
    from viewer.verify import verify

    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return verify(Path(args.recording), Path(args.repair) if args.repair else None)
    except RecordingNotFound as e:
        log.error("event=recording_not_found error=%s", e)
        return exits.NOINPUT
    except RecordingError as e:
        log.error("event=repair_failed error=%s", e)
        return exits.CANTCREAT


def _run(command: str, cfg: Any) -> int:
    from edge.recording import RecordingError, RecordingNotFound
    from viewer.sockets import BindError

    try:
        if command == "watch":
            from viewer.loop import run
            from viewer.watch import WatchApp
            from viewer.headless import OutputError
            from viewer.window import NoDisplay

            try:
                return run(WatchApp(cfg).serve(), cfg.loop)
            except NoDisplay as e:
                log.error("event=no_display error=%s", e)
                return exits.NO_DISPLAY
            except OutputError as e:
                log.error("event=output_failed error=%s", e)
                return exits.CANTCREAT
        if command == "record":
            from viewer.loop import run
            from viewer.record import RecordApp, RecordOutputError

            try:
                return run(RecordApp(cfg).serve(), cfg.loop)
            except RecordOutputError as e:
                log.error("event=output_failed error=%s", e)
                return exits.CANTCREAT
        if command == "replay":
            from viewer.replay import ReplayApp

            return ReplayApp(cfg).serve()
        from viewer.relay import RelayApp

        return RelayApp(cfg).serve()
    except BindError as e:
        log.error("event=bind_failed error=%s", e)
        return exits.UNAVAILABLE
    except RecordingNotFound as e:
        log.error("event=recording_not_found error=%s", e)
        return exits.NOINPUT
    except RecordingError as e:
        log.error("event=recording_error error=%s", e)
        return exits.IOERR if command == "record" else exits.DATAERR


if __name__ == "__main__":
    sys.exit(main())
