"""The daemon's lifecycle: ``startup()``, ``main_loop()``, ``shutdown()``.

Signal handlers only set flags.  One tick every 0.1 s owns every periodic job: the source's
health and reconnect backoff, the status heartbeat and STATUS= line, fps figures, WATCHDOG=1
(sent only while the pipeline threads make progress, so a hung pipeline gets restarted by
systemd) and "should I stop?".
"""
from __future__ import annotations

import collections
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from edge import systemd
from edge.config import EdgeConfig

log = logging.getLogger(__name__)

TICK_S = 0.1

# Exit statuses (sysexits.h), so a unit's RestartPreventExitStatus can tell them apart.
EXIT_OK = 0
EXIT_UNAVAILABLE = 69   # the endpoint is taken, a runtime failed at run time: worth a restart
EXIT_SOFTWARE = 70      # a pipeline thread died: worth a restart
EXIT_CANTCREAT = 73     # the recording folder cannot be written
EXIT_CONFIG = 78        # bad config or model: restarting will not help


class StartupError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def model_and_card(cfg: EdgeConfig) -> tuple[Path, Any]:
    """The model file and its card, or a StartupError(78) naming the file at fault."""
    from models.card import CardError, load_card

    path = Path(cfg.model.path)
    if not path.is_file():
        raise StartupError(f"model.path: {path}: model file not found", EXIT_CONFIG)
    onnx = path.with_suffix(".onnx") if path.suffix == ".engine" else path
    try:
        card = load_card(onnx, verify=cfg.model.verify_sha256 and path.suffix == ".onnx")
    except CardError as e:
        raise StartupError(f"model.path: {e}", EXIT_CONFIG) from None
    return path, card


def build_backend(cfg: EdgeConfig, path: Path, card: Any) -> Any:
    """Create and load the configured backend, or a StartupError(78) with the runtime's reason."""
    if path.suffix == ".engine":
        return engine_backend(cfg, path, card)
    return load_backend(cfg.backend.name, cfg, path, card)


def load_backend(name: str, cfg: EdgeConfig, path: Path, card: Any) -> Any:
    from edge.backends.base import BackendError, create_backend, resolve_name

    try:
        name = resolve_name(name)
    except BackendError as e:
        raise StartupError(f"backend.name={name}: {e}", EXIT_CONFIG) from None
    path, card = choose_model_file(name, cfg, path, card)
    size = inference_size(cfg, card)
    options = {**cfg.backend.runtime_options(), "warm_size": None if size == "native" else size}
    try:
        backend = create_backend(name, path, card, **options)
        backend.load()
    except BackendError as e:
        raise StartupError(f"backend.name={name}: {e}", EXIT_CONFIG) from None
    return backend


def choose_model_file(name: str, cfg: EdgeConfig, path: Path, card: Any) -> tuple[Path, Any]:
    """The fp32 model, or its guarded INT8 sibling where that is what the config or the runtime wants.

    ``backend.precision`` unset: a CPU runtime (``prefers_int8``) runs ``NAME-int8.onnx`` when it
    is the quantisation of this very file, else the file as given.  ``int8``: the sibling, or a
    StartupError(78) saying why there is none.  Anything else: the file as given.
    """
    from edge.backends.base import BackendError, backend_class
    from models.card import CardError, quantized_variant

    wanted = cfg.backend.precision
    if card.precision != "fp32" or wanted not in (None, "int8"):
        return path, card
    if wanted is None:
        try:
            if not backend_class(name).prefers_int8():
                return path, card
        except BackendError:
            return path, card  # an unknown or missing runtime: create_backend gives the message
    try:
        qpath, qcard = quantized_variant(path, card, verify=cfg.model.verify_sha256)
    except CardError as e:
        if wanted == "int8":
            raise StartupError(f"backend.precision=int8: {e}", EXIT_CONFIG) from None
        log.info("event=model_variant backend=%s model=%s precision=fp32 reason=%r", name, path, str(e))
        return path, card
    guard = (getattr(qcard, "quantization", None) or {}).get("guard", {})
    log.info("event=model_variant backend=%s model=%s precision=int8 reason=%r f1_fp32=%s f1_int8=%s", name, qpath,
             "precision int8 asked for" if wanted else f"{name} runs INT8 faster here; backend.precision=fp32 keeps fp32",
             guard.get("f1_fp32"), guard.get("f1_int8"))
    return qpath, qcard


def engine_backend(cfg: EdgeConfig, path: Path, card: Any) -> Any:
    """A prebuilt TensorRT engine, checked before TensorRT is handed its bytes.

    Asked for ``tensorrt``, a refused engine is a config error (78) with the reason.  With ``auto``
    the refusal is logged and the ONNX model beside the engine is loaded instead (by TensorRT,
    which then builds a fitting engine into its cache, or by the next runtime present).
    """
    from edge.backends.base import available_backends
    from edge.backends.tensorrt import EngineRefused, check_engine

    name = cfg.backend.name
    if name not in ("auto", "tensorrt"):
        raise StartupError(f"model.path: {path} is a TensorRT engine; backend.name={name} needs the .onnx model",
                           EXIT_CONFIG)
    try:
        check_engine(path)  # integrity from its sidecar: needs no TensorRT
        if name == "auto" and "tensorrt" not in available_backends():
            raise EngineRefused(path, "TensorRT is not installed on this machine")
        return load_backend("tensorrt", cfg, path, card)
    except EngineRefused as e:
        if name == "tensorrt":
            raise StartupError(f"backend.name=tensorrt: {e}", EXIT_CONFIG) from None
        reason = e.reason
    except StartupError as e:  # TensorRT's own checks (its version, the GPU) refused it
        if name == "tensorrt":
            raise
        reason = str(e)
    onnx = path.with_suffix(".onnx")
    if not onnx.is_file():
        raise StartupError(f"model.path: {path}: engine refused ({reason}) and no {onnx.name} beside it to fall back to",
                           EXIT_CONFIG)
    log.warning("engine refused path=%s reason=%r action=fallback model=%s", path, reason, onnx)
    from models.card import CardError, load_card

    try:  # the ONNX file now runs: hold it to its card's sha256 like any other model
        card = load_card(onnx, verify=cfg.model.verify_sha256)
    except CardError as e:
        raise StartupError(f"model.path: {e}", EXIT_CONFIG) from None
    return load_backend("auto", cfg, onnx, card)


def inference_size(cfg: EdgeConfig, card: Any) -> tuple[int, int] | str:
    size = cfg.model.inference_size
    if size is None:  # the card says how its figures were measured
        return "native" if card.inference == "native" else tuple(card.input_size)
    return size


def open_security(cfg: EdgeConfig) -> Any:
    """The CurveZMQ server for the socket (None without keys); StartupError(78) for the policy or a key file."""
    from edge.security import CurveServer, SecurityError, check_policy

    sec = cfg.security
    try:
        check_policy(cfg.publish.endpoint, sec.enabled, sec.allow_insecure, "security")
        if not sec.enabled:
            return None
        return CurveServer(sec.resolved_secret_key(), sec.authorized_keys)
    except SecurityError as e:
        raise StartupError(str(e), EXIT_CONFIG) from None


def open_position_source(cfg: EdgeConfig) -> Any:
    """The configured position source (None for none); a bad log or setting stops start-up with 78."""
    from edge.position import PositionError, open_position

    try:
        return open_position(cfg.position, cfg.source.uri)
    except PositionError as e:
        raise StartupError(str(e), EXIT_CONFIG) from None


def open_publisher(cfg: EdgeConfig, curve: Any = None) -> tuple[Any, Any]:
    """Bind the XPUB socket with bounded queues, linger and ZMTP heartbeats (a CurveZMQ server with ``curve``)."""
    import zmq

    p = cfg.publish
    ctx = zmq.Context(1)
    sock = ctx.socket(zmq.XPUB)  # XPUB = PUB that also tells us when a subscriber arrives
    sock.setsockopt(zmq.SNDHWM, p.send_hwm)
    sock.setsockopt(zmq.LINGER, p.linger_ms)
    sock.setsockopt(zmq.SNDTIMEO, 0)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every viewer's subscription, not only the first per topic
    if p.heartbeat_ivl_ms:
        sock.setsockopt(zmq.HEARTBEAT_IVL, p.heartbeat_ivl_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, p.heartbeat_timeout_ms)
        sock.setsockopt(zmq.HEARTBEAT_TTL, p.heartbeat_ttl_ms)
    if curve is not None:
        curve.attach(sock)  # before bind: no peer may ever reach it unauthenticated
    try:
        sock.bind(p.endpoint)
    except zmq.ZMQError as e:
        sock.close(0)
        if curve is not None:
            curve.close()
        ctx.term()
        code = EXIT_UNAVAILABLE if e.errno == zmq.EADDRINUSE else EXIT_CONFIG
        raise StartupError(f"publish.endpoint={p.endpoint}: cannot bind: {e}", code) from None
    return ctx, sock


class Daemon:
    def __init__(self, cfg: EdgeConfig) -> None:
        self.cfg = cfg
        self.run_id = uuid.uuid4().hex
        self.should_exit = False
        self.force_exit = False
        self.exit_code = EXIT_OK
        self.state = "starting"
        self.started = time.monotonic()
        self.backend: Any = None
        self.pipeline: Any = None
        self.supervisor: Any = None
        self.ctx: Any = None
        self.sock: Any = None
        self.security: Any = None
        self.reload_requested = False
        self.model_sha256 = ""
        self.size: tuple[int, int] | str = (0, 0)
        self.fps_window: collections.deque = collections.deque(maxlen=60)
        self.next_status = 0.0
        self.watchdog_period = systemd.watchdog_period()
        self.next_watchdog = 0.0
        self.watchdog_held = False
        self.capture_started = False
        self.position: Any = None

    # ------------------------------------------------------------ lifecycle

    def run(self) -> int:
        self.install_signal_handlers()
        try:
            self.startup()
        except StartupError as e:
            log.error("startup failed code=%d error=%s", e.code, e)
            systemd.notify(f"STATUS=startup failed: {e}")
            self.exit_code = e.code
            self.shutdown()
            return self.exit_code
        self.main_loop()
        self.shutdown()
        return self.exit_code

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.handle_exit)
        signal.signal(signal.SIGHUP, self.handle_reload)  # also: a closed terminal must not stop a vehicle

    def handle_reload(self, sig: int, frame: Any) -> None:
        self.reload_requested = True

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.should_exit:
            self.force_exit = True  # a second signal skips the drain
        self.should_exit = True

    def startup(self) -> None:
        import cv2

        from edge.capture import SourceSupervisor, parse_source
        from edge.pipeline import Pipeline, PipelineIdentity
        from edge.processing import Preprocessor
        from models.card import sha256_file

        cfg = self.cfg
        cv2.setNumThreads(cfg.pipeline.cv2_threads)
        try:
            spec = parse_source(cfg.source.uri)
        except ValueError as e:
            raise StartupError(f"source.uri: {e}", EXIT_CONFIG) from None
        self.security = open_security(cfg)
        path, card = model_and_card(cfg)
        self.backend = build_backend(cfg, path, card)
        # What runs may be another file than the one configured (an engine's ONNX, an INT8 sibling).
        path, card = self.backend.model_path, self.backend.card
        self.model_sha256 = card.sha256 or sha256_file(path)
        self.size = inference_size(cfg, card)
        self.position = open_position_source(cfg)
        recorder = self.open_recorder()
        self.ctx, self.sock = open_publisher(cfg, self.security)
        every = cfg.source.mode == "every" or (cfg.source.mode == "auto" and not spec.live)
        thr = cfg.model.threshold if cfg.model.threshold is not None else card.threshold
        ident = PipelineIdentity(cfg.vehicle_id, self.run_id, self.model_sha256, thr, cfg.model.min_component_px,
                                 cfg.publish.frame_jpeg, cfg.publish.jpeg_quality)
        self.pipeline = Pipeline(self.backend, Preprocessor(card, self.size), self.sock, ident,
                                 every_frame=every, queue_size=cfg.pipeline.queue_size,
                                 max_frames=cfg.pipeline.max_frames, recorder=recorder,
                                 wait_subscriber_s=cfg.publish.wait_subscriber_s, position=self.position)
        if self.position is not None:
            self.position.start()
        self.supervisor = SourceSupervisor(spec, cfg.source, self.pipeline.put_frame)
        self.pipeline.start()
        self.state = "running"
        log.info("ready vehicle_id=%s run_id=%s backend=%s model=%s sha256=%s size=%s endpoint=%s source=%s "
                 "kind=%s mode=%s", cfg.vehicle_id, self.run_id, self.backend.name, path, self.model_sha256[:12],
                 self.size, cfg.publish.endpoint, spec.uri, spec.kind, "every" if every else "latest")
        systemd.notify("READY=1\nSTATUS=model loaded, socket bound, starting the source")

    def open_recorder(self) -> Any:
        rec = self.cfg.record
        if not rec.enabled:
            return None
        from edge.recording import RecordingError, RecordingWriter

        directory = rec.resolved_directory()
        try:
            writer = RecordingWriter(directory, prefix=rec.prefix, max_file_bytes=rec.max_file_bytes,
                                     max_total_bytes=rec.max_total_bytes)
        except ValueError as e:
            raise StartupError(f"record: {e}", EXIT_CONFIG) from None
        except RecordingError as e:
            raise StartupError(f"record.directory={directory}: {e}", EXIT_CANTCREAT) from None
        log.info("recording directory=%s prefix=%s", directory, rec.prefix)
        return writer

    def main_loop(self) -> None:
        next_tick = time.monotonic()
        while not self.should_exit:
            self.tick(time.monotonic())
            next_tick += TICK_S
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_tick = time.monotonic()  # a slow tick must not make the next ones rush

    def tick(self, now: float) -> None:
        p, s = self.pipeline, self.supervisor
        if self.reload_requested:
            self.reload_requested = False
            self.reload_keys()
        if not self.capture_started:
            # The source starts once a subscriber came or the wait is over (publish.wait_subscriber_s).
            wait = self.cfg.publish.wait_subscriber_s
            if p.subscribed.is_set() or now - self.started >= wait or not wait:
                s.start(now)
                self.capture_started = True
        else:
            s.tick(now)
        self.fps_window.append((now, p.counters.published))
        if p.failure is not None:
            log.error("stopping: pipeline thread failed error=%r", p.failure)
            self.exit_code, self.should_exit = EXIT_SOFTWARE, True
        elif p.done.is_set():
            log.info("stopping: max_frames=%d published", self.cfg.pipeline.max_frames)
            self.should_exit = True
        elif s.state == "eos" and p.idle():
            log.info("stopping: end of source uri=%s", s.spec.uri)
            self.should_exit = True
        if now >= self.next_status:
            self.next_status = now + self.cfg.publish.status_period_s
            header = self.status_header(now)
            p.send_status(header)
            systemd.notify(f"STATUS={self.status_line(header)}")
        self.watchdog(now)

    def reload_keys(self) -> None:
        """SIGHUP: read the authorised-keys folder again; the socket and the stream stay."""
        if self.security is None:
            log.info("SIGHUP: no keys configured, nothing to reload")
            return
        if self.security.reload().removed:
            # ZAP is asked only at connect: cut every connection so that each is authorised again.
            self.pipeline.call_on_socket(self.security.reauthenticate)

    def watchdog(self, now: float) -> None:
        if self.watchdog_period is None or now < self.next_watchdog:
            return
        if self.pipeline.healthy(now, self.cfg.pipeline.stall_s):
            self.next_watchdog = now + self.watchdog_period
            systemd.notify("WATCHDOG=1")
            self.watchdog_held = False
        elif not self.watchdog_held:
            # No ping: systemd's WatchdogSec will restart us, which is what a hung pipeline needs.
            log.error("pipeline stalled: watchdog pings withheld beats=%s", self.pipeline.beats)
            self.watchdog_held = True

    def fps(self) -> float:
        if len(self.fps_window) < 2:
            return 0.0
        # A window of about five seconds: steady, yet quick to show a dead source.
        t_now, n_now = self.fps_window[-1]
        for t, n in self.fps_window:
            if t_now - t <= 5.0:
                return (n_now - n) / (t_now - t) if t_now > t else 0.0
        return 0.0

    def status_header(self, now: float) -> dict[str, Any]:
        p, s = self.pipeline, self.supervisor
        if self.size == "native":
            h, w = p.counters.last_size
        else:
            h, w = self.size  # type: ignore[misc]
        return {
            "vehicle_id": self.cfg.vehicle_id, "run_id": self.run_id, "seq": 0, "t_publish": time.time(),
            "fps": round(self.fps(), 3),
            "drops": {**p.drops, "unreadable": s.unreadable},
            "source": {**s.snapshot(), "mode": "every" if p.every_frame else "latest"},
            "backend": self.backend.name, "backend_info": self.backend.describe(),
            "model_sha256": self.model_sha256, "width": int(w), "height": int(h),
            "state": self.state, "uptime_s": round(now - self.started, 3),
            "published": p.counters.published, "last_frame_index": p.counters.last_frame_index,
            "stages_ms": p.times.summary(),
            "record": {"enabled": self.cfg.record.enabled, "active": p.recorder is not None,
                       "errors": p.counters.record_errors},
            **({"position": self.position.status()} if self.position is not None else {}),
        }

    @staticmethod
    def status_line(h: dict[str, Any]) -> str:
        src, drops = h["source"], h["drops"]
        line = (f"{h['state']} fps={h['fps']:.1f} source={src['state']} published={h['published']} "
                f"drops={drops['capture']}/{drops['inference']}/{drops['publish']} reconnects={src['reconnects']}")
        if src["state"] != "ok" and src["last_error"]:
            line += f" error={src['last_error'][:80]}"
        return line

    def shutdown(self) -> None:
        self.state = "stopping"
        systemd.notify("STOPPING=1\nSTATUS=stopping")
        if self.supervisor is not None:
            self.supervisor.stop(timeout=1.0)
        if self.position is not None:
            self.position.stop(timeout=1.0)
        p = self.pipeline
        if p is not None:
            deadline = time.monotonic() + (0.0 if self.force_exit else self.cfg.pipeline.drain_timeout_s)
            while not p.idle() and time.monotonic() < deadline and not self.force_exit:
                time.sleep(0.02)
            self.state = "stopped"
            p.send_status(self.status_header(time.monotonic()))
            if not p.stop(timeout=1.0):
                log.warning("pipeline threads did not end in time; leaving them")
        threads_done = p is None or not p.alive()
        if self.sock is not None and threads_done:
            self.sock.close(self.cfg.publish.linger_ms)
            if self.security is not None:
                self.security.close()
            self.ctx.term()
        if self.backend is not None and threads_done:
            self.backend.close()
        log.info("stopped code=%d published=%d", self.exit_code, p.counters.published if p else 0)

    def leftover_threads(self) -> bool:
        """True when a hung reader or pipeline thread remains (the caller then skips interpreter teardown)."""
        stuck = self.supervisor.stuck_readers if self.supervisor is not None else 0
        p = self.pipeline
        return bool(stuck) or (p is not None and p.alive())


def run(cfg: EdgeConfig) -> int:
    """Run the daemon until stopped; returns the exit status."""
    daemon = Daemon(cfg)
    code = daemon.run()
    if daemon.leftover_threads():
        logging.shutdown()
        os._exit(code)  # a thread stuck in a C read must not hold the process at exit
    return code
