"""What ``run``, ``check`` and ``bench`` open from a config, in one place.

The model and its card, the backend (``auto`` resolved once, in edge.backends), the guarded
INT8 sibling, the TensorRT engine and its ONNX fallback, the threshold, the inference size and
its pre-processor, the security policy and keys, the publisher, the recorder and the pipeline.
Each step raises :class:`StartupError` with the setting at fault and the exit status
(common.exits) that goes with it; ``check`` runs the same steps as ``run``, so a config that
passes ``check`` starts.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import exits
from edge.config import EdgeConfig

log = logging.getLogger(__name__)


class StartupError(Exception):
    """A setting, file or runtime that stops the daemon from starting; ``code`` is its exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ model, card, backend

def model_and_card(cfg: EdgeConfig) -> tuple[Path, Any]:
    """The model file and its card, or a StartupError(78) naming the file (or card field) at fault."""
    from models.card import CardError, load_card

    path = Path(cfg.model.path)
    if not path.is_file():
        raise StartupError(f"model.path: {path}: model file not found", exits.CONFIG)
    if path.suffix == ".engine":
        from edge.backends.tensorrt import onnx_for_engine

        onnx = onnx_for_engine(path)  # NAME.fp16.engine names NAME.onnx (and so NAME.json) in its sidecar
    else:
        onnx = path
    try:
        card = load_card(onnx, verify=cfg.model.verify_sha256 and path.suffix == ".onnx")
    except CardError as e:
        raise StartupError(f"model.path: {e}", exits.CONFIG) from None
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
        raise StartupError(f"backend.name={name}: {e}", exits.CONFIG) from None
    path, card = choose_model_file(name, cfg, path, card)
    size = inference_size(cfg, card)
    options = {**cfg.backend.runtime_options(), "warm_size": None if size == "native" else size}
    try:
        backend = create_backend(name, path, card, **options)
        backend.load()
    except BackendError as e:
        raise StartupError(f"backend.name={name}: {e}", exits.CONFIG) from None
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
            raise StartupError(f"backend.precision=int8: {e}", exits.CONFIG) from None
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
    from edge.backends.tensorrt import EngineRefused, check_engine, onnx_for_engine

    name = cfg.backend.name
    if name not in ("auto", "tensorrt"):
        raise StartupError(f"model.path: {path} is a TensorRT engine; backend.name={name} needs the .onnx model",
                           exits.CONFIG)
    try:
        check_engine(path)  # integrity from its sidecar: needs no TensorRT
        if name == "auto" and "tensorrt" not in available_backends():
            raise EngineRefused(path, "TensorRT is not installed on this machine")
        return load_backend("tensorrt", cfg, path, card)
    except EngineRefused as e:
        if name == "tensorrt":
            raise StartupError(f"backend.name=tensorrt: {e}", exits.CONFIG) from None
        reason = e.reason
    except StartupError as e:  # TensorRT's own checks (its version, the GPU) refused it
        if name == "tensorrt":
            raise
        reason = str(e)
    onnx = onnx_for_engine(path)
    if not onnx.is_file():
        raise StartupError(f"model.path: {path}: engine refused ({reason}) and no {onnx.name} beside it to fall back to",
                           exits.CONFIG)
    log.warning("engine refused path=%s reason=%r action=fallback model=%s", path, reason, onnx)
    from models.card import CardError, load_card

    try:  # the ONNX file now runs: hold it to its card's sha256 like any other model
        card = load_card(onnx, verify=cfg.model.verify_sha256)
    except CardError as e:
        raise StartupError(f"model.path: {e}", exits.CONFIG) from None
    return load_backend("auto", cfg, onnx, card)


# ------------------------------------------------------------------ what the pipeline needs of the model

def inference_size(cfg: EdgeConfig, card: Any) -> tuple[int, int] | str:
    """(H, W) frames are resized to, or "native"; the config's, else what the card was measured at."""
    size = cfg.model.inference_size
    if size is None:  # the card says how its figures were measured
        return "native" if card.inference == "native" else tuple(card.input_size)
    return size


def resolve_threshold(cfg: EdgeConfig, card: Any) -> float:
    """The configured threshold, else the card's.  ``is None``, never ``or``: 0.0 is a threshold."""
    return float(cfg.model.threshold) if cfg.model.threshold is not None else float(card.threshold)


def check_size_bound(cfg: EdgeConfig, size: tuple[int, int] | str) -> None:
    """A fixed inference size must lie within ``model.max_side`` (the bound 'native' frames are scaled to)."""
    if size != "native" and max(size) > cfg.model.max_side:  # type: ignore[arg-type]
        raise StartupError(f"model.inference_size={size[0]}x{size[1]} exceeds model.max_side={cfg.model.max_side}; "
                           "raise model.max_side or choose a smaller size", exits.CONFIG)


@dataclass
class LoadedModel:
    """The backend that runs and the facts the pipeline takes from its file and card."""
    backend: Any
    path: Path                       # what runs: maybe an engine's ONNX or an INT8 sibling
    card: Any
    size: tuple[int, int] | str
    threshold: float
    sha256: str
    max_side: int

    def preprocessor(self) -> Any:
        from edge.processing import Preprocessor

        return Preprocessor(self.card, self.size, max_side=self.max_side)

    def close(self) -> None:
        self.backend.close()


def load_model(cfg: EdgeConfig) -> LoadedModel:
    """Model, card, backend, size and threshold as the daemon runs them (StartupError on any refusal)."""
    from models.card import sha256_file

    path, card = model_and_card(cfg)
    check_size_bound(cfg, inference_size(cfg, card))
    backend = build_backend(cfg, path, card)
    path, card = backend.model_path, backend.card
    size = inference_size(cfg, card)
    max_side, source = resolve_max_side(cfg, card)
    log.info("event=inference_size mode=%s size=%s max_side=%d source=%r train_crop_px=%s train_scale=%s",
             "native" if size == "native" else "resize", "native" if size == "native" else f"{size[0]}x{size[1]}",
             max_side, source, card.train_scale.get("crop_px"), card.train_scale.get("scale"))
    return LoadedModel(backend, path, card, size, resolve_threshold(cfg, card), card.sha256 or sha256_file(path),
                       max_side)


def resolve_max_side(cfg: EdgeConfig, card: Any) -> tuple[int, str]:
    """Longest side 'native' frames run at (models.preprocess.native_max_side), and why."""
    from models.preprocess import native_max_side

    configured = cfg.model.max_side if "max_side" in cfg.model.model_fields_set else None
    return native_max_side(card, configured, cfg.model.max_side)


def probe_model(model: LoadedModel) -> None:
    """One inference on a blank frame of the size the daemon runs at; StartupError(78) on a wrong output."""
    import numpy as np

    h, w = model.card.input_size if model.size == "native" else model.size
    out = model.backend.infer(np.zeros((1, 3, h, w), np.float32))
    if out.shape != (1, 1, h, w):
        raise StartupError(f"model.path: {model.path}: output shape {out.shape}, expected (1, 1, {h}, {w})",
                           exits.CONFIG)


# ------------------------------------------------------------------ source, security, publisher, recorder

def source_spec(cfg: EdgeConfig) -> Any:
    from edge.capture import parse_source

    try:
        return parse_source(cfg.source.uri)
    except ValueError as e:
        raise StartupError(f"source.uri: {e}", exits.CONFIG) from None


def probe_source(cfg: EdgeConfig, spec: Any) -> tuple[int, int]:
    """Open the source once and read a frame, within ``source.open_timeout_s`` (+ one read timeout).

    Returns the frame's (H, W).  A file or folder that is not there: NOINPUT (66); a camera or
    stream that does not answer: UNAVAILABLE (69).  ``run`` would retry these; ``check`` says so.
    """
    from edge.capture import EOS, OK, SourceError, open_reader

    src = cfg.source.model_copy(update={"pace": False})
    answer: dict[str, Any] = {}

    def attempt() -> None:
        try:
            reader = open_reader(spec, src)
            try:
                for _ in range(src.max_unreadable):
                    status, frame = reader.read()
                    if status == OK:
                        answer["shape"] = frame.shape[:2]
                        return
                    if status == EOS:
                        break
                answer["error"] = "no readable frame"
            finally:
                reader.close()
        except SourceError as e:
            answer["error"] = str(e)
        except Exception as e:  # OpenCV backends raise their own
            answer["error"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=attempt, name="source-probe", daemon=True)  # a hung open is left behind
    t.start()
    t.join(src.open_timeout_s + src.read_timeout_s)
    code = exits.NOINPUT if spec.kind in ("file", "folder") else exits.UNAVAILABLE
    if t.is_alive():
        raise StartupError(f"source.uri={spec.uri}: no frame within {src.open_timeout_s + src.read_timeout_s:g}s "
                           "(source.open_timeout_s + source.read_timeout_s)", code)
    if "error" in answer:
        raise StartupError(f"source.uri={spec.uri}: {answer['error']}", code)
    return answer["shape"]


def check_security(cfg: EdgeConfig) -> None:
    """The policy and the key files, as :func:`open_security` reads them, without starting a ZAP thread."""
    from edge.security import SecurityError, check_policy, load_secret, read_authorised

    sec = cfg.security
    try:
        check_policy(cfg.publish.endpoint, sec.enabled, sec.allow_insecure, "security")
        if cfg.history.endpoint is not None:
            check_policy(cfg.history.endpoint, sec.enabled, sec.allow_insecure, "security")
        if sec.enabled:
            load_secret(sec.resolved_secret_key(), "security.secret_key")
            _, skipped = read_authorised(sec.authorized_keys, "security.authorized_keys")
            if skipped:
                raise SecurityError(skipped[0][1])
    except SecurityError as e:
        raise StartupError(str(e), exits.CONFIG) from None


def open_security(cfg: EdgeConfig) -> Any:
    """The CurveZMQ server for the socket (None without keys); StartupError(78) for the policy or a key file."""
    from edge.security import CurveServer, SecurityError, check_policy

    sec = cfg.security
    try:
        check_policy(cfg.publish.endpoint, sec.enabled, sec.allow_insecure, "security")
        if cfg.history.endpoint is not None:  # the history holds the same masks: the same rule
            check_policy(cfg.history.endpoint, sec.enabled, sec.allow_insecure, "security")
        if not sec.enabled:
            return None
        return CurveServer(sec.resolved_secret_key(), sec.authorized_keys)
    except SecurityError as e:
        raise StartupError(str(e), exits.CONFIG) from None


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
        code = exits.UNAVAILABLE if e.errno == zmq.EADDRINUSE else exits.CONFIG
        raise StartupError(f"publish.endpoint={p.endpoint}: cannot bind: {e}", code) from None
    return ctx, sock


def open_recorder(cfg: EdgeConfig, observer: Any = None) -> Any:
    """The recording writer (None when recording is off); 78 for a bad setting, 73 for a folder not writable.

    ``observer`` (the history index) is told where each record went and which files rotated away.
    """
    rec = cfg.record
    if not rec.enabled:
        return None
    from edge.recording import RecordingError, RecordingWriter

    directory = rec.resolved_directory()
    try:
        writer = RecordingWriter(directory, prefix=rec.prefix, max_file_bytes=rec.max_file_bytes,
                                 max_total_bytes=rec.max_total_bytes, observer=observer)
    except ValueError as e:
        raise StartupError(f"record: {e}", exits.CONFIG) from None
    except RecordingError as e:
        raise StartupError(f"record.directory={directory}: {e}", exits.CANTCREAT) from None
    log.info("recording directory=%s prefix=%s", directory, rec.prefix)
    return writer


def open_history(cfg: EdgeConfig, ctx: Any, curve: Any, index: Any, recording: Any = None) -> Any:
    """The history service bound on ``history.endpoint`` in the publisher's context (None when unset).

    Bound like the PUB socket: CurveZMQ with the same keys and authorised viewers before bind;
    a taken port is 69, any other bind failure 78.  Serving starts with :meth:`HistoryServer.start`.
    """
    if cfg.history.endpoint is None:
        return None
    import zmq

    from edge.history import HistoryServer

    server = HistoryServer(ctx, cfg.history, index, curve, recording)
    try:
        server.open()
    except zmq.ZMQError as e:
        code = exits.UNAVAILABLE if e.errno == zmq.EADDRINUSE else exits.CONFIG
        raise StartupError(f"history.endpoint={cfg.history.endpoint}: cannot bind: {e}", code) from None
    return server


def every_frame(cfg: EdgeConfig, spec: Any) -> bool:
    """Every frame in order (files, folders) or the latest one wins (live sources), as source.mode says."""
    return cfg.source.mode == "every" or (cfg.source.mode == "auto" and not spec.live)


def open_position_source(cfg: EdgeConfig) -> Any:
    """The configured position source (None for none); a bad log or setting stops start-up with 78."""
    from edge.position import PositionError, open_position

    try:
        return open_position(cfg.position, cfg.source.uri)
    except PositionError as e:
        raise StartupError(str(e), exits.CONFIG) from None


def build_pipeline(cfg: EdgeConfig, model: LoadedModel, sock: Any, run_id: str, *, every: bool,
                   recorder: Any = None, max_frames: int | None = None,
                   wait_subscriber_s: float | None = None, position: Any = None) -> Any:
    """The daemon's Pipeline on ``sock``; bench passes its own frame count and subscriber wait."""
    from edge.measure import Ground
    from edge.pipeline import Pipeline, PipelineIdentity

    ident = PipelineIdentity(cfg.vehicle_id, run_id, model.sha256, model.threshold, cfg.model.min_component_px,
                             cfg.publish.frame_jpeg, cfg.publish.jpeg_quality)
    return Pipeline(model.backend, model.preprocessor(), sock, ident, every_frame=every,
                    queue_size=cfg.pipeline.queue_size,
                    max_frames=cfg.pipeline.max_frames if max_frames is None else max_frames, recorder=recorder,
                    wait_subscriber_s=cfg.publish.wait_subscriber_s if wait_subscriber_s is None else wait_subscriber_s,
                    position=position, ground=Ground.from_config(cfg.ground))
