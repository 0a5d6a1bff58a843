"""The daemon's settings: one pydantic model, read from TOML, then ``CRACK_EDGE_*``, then flags.

Precedence is flags > environment > TOML > defaults, applied by the shared loader
(:mod:`common.settings`).  Nested keys reach the environment with a double underscore
(``CRACK_EDGE_SOURCE__URI``).  Unknown keys (in the file, the environment or ``backend.options``)
and bad values are refused at start-up, all of them at once, each with its key named
(:class:`ConfigError`; the daemon exits 78 so systemd stops retrying).  Each section is its own
model so another one (``security`` for CurveZMQ keys) is one field more.
"""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from common import settings
from edge.wire import Defaults
from models import DEFAULT_MODEL

ENV_PREFIX = "CRACK_EDGE_"
DEMO_CLIP = Path(__file__).resolve().parent / "demo" / "crackforest.mp4"
# Bounds of settings that size allocations or threads: beyond them a typo, not a machine.
MAX_CAMERA_SIDE = 8192      # wire.MAX_SIDE: no mask or frame larger than the wire carries
MAX_THREADS = 256
SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX,]\s*(\d+)\s*$")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the key (or file) at fault."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SourceConfig(Section):
    uri: str = Field(str(DEMO_CLIP), description=(
        "What to read: a camera index (0) or /dev/videoN, a GStreamer pipeline (contains '!'), "
        "rtsp://..., another network URL OpenCV/FFmpeg reads (tcp://, udp://, http://), "
        "a video file, or a folder of images"))
    mode: Literal["auto", "every", "latest"] = Field("auto", description=(
        "'latest': a frame waiting for inference is replaced by a newer one (drops counted, bounded "
        "latency); 'every': every frame is inferred and published in order, none dropped; "
        "'auto': every for files and folders, latest for live sources"))
    loop: bool = Field(True, description="Start a file or folder again at its end (otherwise the daemon stops there)")
    pace: bool = Field(False, description="Read files and folders at their native frame rate (camera emulation)")
    fps: float | None = Field(None, gt=0, description=(
        "Frame rate for pacing when the file has none or for folders (default: the file's own, 10 for folders)"))
    camera_size: tuple[int, int] | None = Field(None, description="[W, H] to request from a V4L2 camera (default: its own)")
    read_timeout_s: float = Field(5.0, gt=0, description=(
        "Network reads time out after this long (FFmpeg); any read still blocked after 1.5 times "
        "this is abandoned and the source reopened"))
    open_timeout_s: float = Field(10.0, gt=0, description="Opening a source that takes longer counts as a failure")
    reconnect_min_s: float = Field(0.5, gt=0, description="First wait before reopening a failed source")
    # Half the 10 s within which masks must resume after a camera returns (docs/reliability.md).
    reconnect_max_s: float = Field(5.0, gt=0, description="Longest wait between reopening attempts (doubling backoff)")
    max_unreadable: int = Field(25, ge=1, description=(
        "Consecutive unreadable frames after which the source counts as failed and is reopened"))

    @field_validator("camera_size")
    @classmethod
    def _camera_size(cls, v: Any) -> Any:
        if v is not None and not all(1 <= n <= MAX_CAMERA_SIDE for n in v):
            raise ValueError(f"[W, H] must each lie in 1..{MAX_CAMERA_SIDE}")
        return v

    @model_validator(mode="after")
    def _backoff_order(self) -> "SourceConfig":
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"reconnect_max_s ({self.reconnect_max_s}) is below reconnect_min_s ({self.reconnect_min_s})")
        return self


class ModelConfig(Section):
    path: Path = Field(DEFAULT_MODEL, description="The ONNX model (or a TensorRT .engine); its card NAME.json lies beside it")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Crack probability threshold (default: the card's)")
    inference_size: Union[tuple[int, int], Literal["native"], None] = Field(None, description=(
        "[H, W] the frames are resized to before inference (default: the card's input_size), "
        "or 'native': the frame's own size padded to a multiple of 4"))
    verify_sha256: bool = Field(True, description="Refuse a card whose sha256 does not match the model file")
    min_component_px: int = Field(5, ge=1, description="Smallest connected region, in pixels, counted as a crack")
    max_side: int = Field(1920, ge=64, le=MAX_CAMERA_SIDE, description=(
        "Longest side, px, of the frame the model infers on: a 'native'-size frame beyond it is scaled down "
        "(counted as drops.downscaled, logged once), so no photo or camera mode can exhaust memory; a fixed "
        "inference_size beyond it is refused"))

    @field_validator("inference_size", mode="before")
    @classmethod
    def _parse_size(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.strip().lower() == "native":
                return "native"
            m = SIZE_RE.match(v)
            if not m:
                raise ValueError(f"{v!r} is neither HxW (e.g. 448x448) nor 'native'")
            return (int(m.group(1)), int(m.group(2)))
        return v

    @field_validator("inference_size")
    @classmethod
    def _multiple_of_4(cls, v: Any) -> Any:
        if isinstance(v, tuple):
            h, w = v
            if h <= 0 or w <= 0 or h % 4 or w % 4:
                ph, pw = max(4, -(-h // 4) * 4), max(4, -(-w // 4) * 4)
                raise ValueError(f"{h}x{w} is not a positive multiple of 4; use {ph}x{pw}")
        return v


class BackendConfig(Section):
    name: str = Field("auto", description="Inference runtime: auto (best present), tensorrt, openvino or onnxruntime")
    threads: int = Field(0, ge=0, le=MAX_THREADS, description="Runtime CPU threads (0: the runtime's default)")
    streams: int = Field(0, ge=0, le=16, description=(
        "Frames inferred at once, each on its share of the cores (OpenVINO; 0: auto, 2 on a multi-core CPU, "
        "1 for the lowest latency per frame)"))
    precision: Literal["fp32", "fp16", "bf16", "int8"] | None = Field(None, description=(
        "Precision to run at (default: the model's own; on a CPU runtime, the model's guarded INT8 sibling "
        "NAME-int8.onnx when there is one; fp32 keeps the fp32 file)"))
    cache_dir: Path | None = Field(None, description=(
        "Where compiled engines are cached (default: $CACHE_DIRECTORY under systemd, else ~/.cache/crack-edge)"))
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "Runtime-specific options, checked against the named backend's own list (its Options model in "
        "edge/backends/NAME.py); needs `name` set to that backend"))

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from edge.backends.base import BACKENDS

        if v != "auto" and v not in BACKENDS:
            raise ValueError(f"unknown backend {v!r}; choose one of: auto, {', '.join(BACKENDS)}")
        return v

    @field_validator("options")
    @classmethod
    def _typed_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from edge.backends.base import options_model

        name = info.data.get("name")
        if name is None or not v:  # a bad name is reported on its own
            return v
        if name == "auto":
            raise ValueError(f"options {sorted(v)} belong to one runtime: set backend.name to it "
                             "(auto picks one only at start-up)")
        return settings.check_table(options_model(name), v, f"for backend {name}")

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        if os.environ.get("CACHE_DIRECTORY"):  # set by systemd's CacheDirectory=
            return Path(os.environ["CACHE_DIRECTORY"].split(":")[0])
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crack-edge"

    def runtime_options(self) -> dict[str, Any]:
        """What create_backend(**options) receives: only the options that were set."""
        opts: dict[str, Any] = dict(self.options)
        if self.threads:
            opts["threads"] = self.threads
        if self.streams:
            opts["streams"] = self.streams
        if self.precision:
            opts["precision"] = self.precision
        opts["cache_dir"] = str(self.resolved_cache_dir())
        return opts


class PublishConfig(Section):
    endpoint: str = Field(Defaults.ENDPOINT, description="ZeroMQ endpoint the PUB socket binds (tcp://host:port or ipc://path)")
    send_hwm: int = Field(Defaults.SNDHWM, ge=1, description="Messages queued per subscriber before they are dropped")
    linger_ms: int = Field(Defaults.LINGER_MS, ge=0, le=10000, description="How long closing the socket may wait for queued messages, ms")
    heartbeat_ivl_ms: int = Field(Defaults.HEARTBEAT_IVL_MS, ge=0, description="ZMTP PING interval, ms (0: off)")
    heartbeat_timeout_ms: int = Field(Defaults.HEARTBEAT_TIMEOUT_MS, ge=0, description="A peer silent this long is dropped, ms")
    heartbeat_ttl_ms: int = Field(Defaults.HEARTBEAT_TTL_MS, ge=0, description="TTL announced to peers in PINGs, ms")
    status_period_s: float = Field(Defaults.STATUS_PERIOD_S, gt=0, le=60, description="Period of the status/<vehicle_id> heartbeat, s")
    frame_jpeg: bool = Field(True, description="Attach the frame (at inference resolution) as a JPEG to each mask message")
    jpeg_quality: int = Field(80, ge=10, le=100, description="JPEG quality of the attached frame")
    wait_subscriber_s: float = Field(0.0, ge=0, description=(
        "Before reading the source, wait up to this long for a first subscriber (0: do not wait)"))

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return _check_endpoint(v)


class RecordConfig(Section):
    enabled: bool = Field(False, description="Append every published message to local recordings (viewer's format)")
    directory: Path = Field(Path("recordings"), description=(
        "Folder of the recordings (relative paths lie under $STATE_DIRECTORY when systemd sets it)"))
    prefix: str = Field("edge", min_length=1, description="File name prefix: <prefix>-NNNNNN.crec")
    max_file_bytes: int = Field(64 * 2**20, ge=4096, description="A file is closed and the next begun beyond this size, bytes")
    max_total_bytes: int = Field(2**30, ge=4096, description="Oldest files are deleted when all of them exceed this, bytes")

    def resolved_directory(self) -> Path:
        if not self.directory.is_absolute() and os.environ.get("STATE_DIRECTORY"):
            return Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / self.directory
        return self.directory


def _check_endpoint(v: str) -> str:
    m = re.match(r"^(tcp://[^:]+:(\d+|\*)|ipc://.+|inproc://.+)$", v)
    if not m:
        raise ValueError(f"{v!r} is not a ZeroMQ endpoint like tcp://127.0.0.1:5555 or ipc:///run/crack-edge/pub")
    port = m.group(2)
    if port is not None and port != "*" and not 1 <= int(port) <= 65535:
        raise ValueError(f"{v!r}: port {port} is not in 1..65535 (ZeroMQ would bind a random port)")
    return v


class HistoryConfig(Section):
    endpoint: str | None = Field(None, description=(
        "ZeroMQ endpoint the history service (a ROUTER socket) binds, e.g. tcp://0.0.0.0:5556: viewers ask it "
        "for the masks they missed, served from this daemon's own recording (needs [record] enabled; secured "
        "like the PUB socket). Unset: no history service"))
    advertise: str | None = Field(None, description=(
        "The endpoint status headers name for viewers to connect to (default: `endpoint`; a wildcard host such "
        "as 0.0.0.0 is replaced by viewers with the host they subscribe to)"))
    batch_records: int = Field(64, ge=1, le=256, description="Most masks in one reply (a larger range is served in batches)")
    batch_bytes: int = Field(4 * 2**20, ge=64 * 2**10, le=64 * 2**20, description=(
        "Most bytes of masks in one reply (a reply holds at least one mask)"))
    rate_bytes_per_s: int = Field(2 * 2**20, ge=64 * 2**10, description=(
        "History replies are paced to this many bytes per second, so the live masks keep their rate on the link"))
    send_hwm: int = Field(8, ge=1, le=1024, description="Replies queued per viewer before they are dropped (never blocks)")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        return None if v is None else _check_endpoint(v)

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 256 or not re.match(r"^(tcp://[^:\s]+:\d+|ipc://\S+)$", v)):
            raise ValueError(f"{v[:64]!r} is not an endpoint a viewer can connect to, like tcp://10.0.0.5:5556")
        return v


class PositionConfig(Section):
    kind: Literal["none", "gpsd", "nmea-serial", "nmea-log", "gpx-log", "exif", "fixed"] = Field("none", description=(
        "Where positions come from: gpsd, a serial NMEA receiver, an NMEA or GPX log aligned by time, the GPS "
        "tags of the photos of a folder source, a fixed position, or none (no position field)"))
    host: str = Field("127.0.0.1", description="gpsd's host")
    port: int = Field(2947, ge=1, le=65535, description="gpsd's TCP port")
    device: str | None = Field(None, description="nmea-serial: the receiver's device, e.g. /dev/ttyACM0")
    baud: int = Field(9600, ge=300, le=921600, description="nmea-serial: baud rate (set when pyserial is installed)")
    path: Path | None = Field(None, description="nmea-log / gpx-log: the log file")
    start_time: Union[float, str, None] = Field(None, description=(
        "Logs: the time of the video's first frame on the log's clock, ISO 8601 or epoch seconds (default: the "
        "video file's mtime; exif: the first photo's time)"))
    offset_s: float = Field(0.0, description="Logs and photos: added to every frame time to line the log up")
    lat: float | None = Field(None, ge=-90, le=90, description="fixed: latitude, degrees WGS84")
    lon: float | None = Field(None, ge=-180, le=180, description="fixed: longitude, degrees WGS84")
    alt_m: float | None = Field(None, description="fixed: altitude, m")
    heading_deg: float | None = Field(None, ge=0, lt=360, description="fixed: heading, degrees clockwise from north")
    stale_s: float = Field(2.0, gt=0, description="A frame further than this from the nearest fix has no position")
    max_gap_s: float = Field(5.0, gt=0, description="Fixes further apart than this are not interpolated between")
    reconnect_min_s: float = Field(0.5, gt=0, description="gpsd / serial: first wait before reconnecting")
    reconnect_max_s: float = Field(5.0, gt=0, description="gpsd / serial: longest wait between attempts (doubling)")


class GroundConfig(Section):
    """The ground-plane calibration written by ``crack-edge calibrate`` (docs/edge.md#ground-plane-calibration)."""
    homography: list[list[float]] | None = Field(None, description=(
        "3x3 homography from a pixel of the calibration image (pixel centres at integer coordinates) to the "
        "road plane, metres from the vehicle's reference point; absent: masks are measured in pixels only"))
    image_size: tuple[int, int] | None = Field(None, description=(
        "[W, H] of the image the homography was measured on; masks are scaled to it before mapping"))
    forward: Literal["+y", "-y", "+x", "-x"] = Field("+y", description=(
        "Which axis of the homography's road coordinates points in the driving direction (right is 90 degrees "
        "clockwise from it, seen from above); headers always say x right, y forward"))
    max_range_m: float = Field(20.0, gt=0, le=1000, description=(
        "Road further than this (forward or back) from the reference point is not measured (a pixel there "
        "covers too much road); the rest of the image is the frame's footprint"))
    severity_mm: tuple[float, float] = Field((10.0, 75.0), description=(
        "[low_below, high_above] widest-width thresholds, mm (ASTM D6433 asphalt: low < 10, medium 10-75, "
        "high > 75)"))

    @model_validator(mode="after")
    def _usable(self) -> "GroundConfig":
        if (self.homography is None) != (self.image_size is None):
            missing = "image_size" if self.image_size is None else "homography"
            raise ValueError(f"{missing} is needed as well: homography and image_size go together")
        low, high = self.severity_mm
        if not 0 < low <= high:
            raise ValueError(f"severity_mm {list(self.severity_mm)}: need 0 < low <= high")
        if self.homography is not None:
            from edge.measure import Ground, GroundError

            if not all(1 <= n <= MAX_CAMERA_SIDE for n in self.image_size):
                raise ValueError(f"image_size [W, H] must each lie in 1..{MAX_CAMERA_SIDE}")
            try:
                Ground.build(self.homography, self.image_size, self.forward, self.max_range_m, self.severity_mm)
            except GroundError as e:
                raise ValueError(f"{e} (recalibrate with crack-edge calibrate)") from None
        return self

    @property
    def enabled(self) -> bool:
        return self.homography is not None


class PipelineConfig(Section):
    max_frames: int = Field(0, ge=0, description="Stop after publishing this many masks (0: never; for tests and benchmarks)")
    queue_size: int = Field(4, ge=1, le=256, description="Inferred frames waiting to be published (oldest dropped when full in latest mode)")
    cv2_threads: int = Field(1, ge=0, le=64, description="OpenCV's worker threads (small: inference needs the cores)")
    drain_timeout_s: float = Field(3.0, ge=0, le=60, description="On SIGTERM, how long queued frames may still be published, s")
    stall_s: float = Field(20.0, gt=0, description=(
        "A pipeline thread silent this long stops the watchdog pings (systemd then restarts the daemon), s"))


class SecurityConfig(Section):
    secret_key: Path | None = Field(None, description=(
        "The daemon's secret certificate (daemon.key_secret from `crack-edge keys`, mode 0600); with "
        "authorized_keys it makes the socket a CurveZMQ server: encrypted, only authorised viewers "
        "(relative paths lie under $CREDENTIALS_DIRECTORY when systemd's LoadCredential= sets it)"))
    authorized_keys: Path | None = Field(None, description=(
        "Folder of the public certificates (*.key) of the viewers allowed to subscribe; read again on SIGHUP"))
    allow_insecure: bool = Field(False, description=(
        "Publish unencrypted to anyone on a non-loopback endpoint when no keys are set (otherwise the daemon "
        "refuses to start, exit 78); the choice is logged as a warning"))

    @model_validator(mode="after")
    def _together(self) -> "SecurityConfig":
        if (self.secret_key is None) != (self.authorized_keys is None):
            missing = "authorized_keys" if self.authorized_keys is None else "secret_key"
            raise ValueError(f"{missing} is needed as well: secret_key and authorized_keys go together")
        return self

    @property
    def enabled(self) -> bool:
        return self.secret_key is not None

    def resolved_secret_key(self) -> Path | None:
        if self.secret_key is not None and not self.secret_key.is_absolute() and os.environ.get("CREDENTIALS_DIRECTORY"):
            return Path(os.environ["CREDENTIALS_DIRECTORY"]) / self.secret_key
        return self.secret_key


class EdgeConfig(BaseModel):
    """Everything the edge daemon reads at start-up."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    vehicle_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128, description=(
        "Name of this vehicle in topics (mask/<vehicle_id>); default: the host name"))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging threshold")
    source: SourceConfig = Field(default_factory=SourceConfig, description="The camera or file")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model and its post-processing")
    backend: BackendConfig = Field(default_factory=BackendConfig, description="The inference runtime")
    publish: PublishConfig = Field(default_factory=PublishConfig, description="The ZeroMQ PUB socket and heartbeat")
    record: RecordConfig = Field(default_factory=RecordConfig, description="Local 'nothing lost' recordings")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Threads, queues and stopping")
    security: SecurityConfig = Field(default_factory=SecurityConfig, description="CurveZMQ keys of the PUB socket")
    position: PositionConfig = Field(default_factory=PositionConfig, description="Where the vehicle is (GPS)")
    history: HistoryConfig = Field(default_factory=HistoryConfig, description=(
        "The history service: the daemon's recording served to viewers that missed masks"))

    @model_validator(mode="after")
    def _history_needs_recording(self) -> "EdgeConfig":
        ep = self.history.endpoint
        if ep is not None and not self.record.enabled:
            raise ValueError("history.endpoint needs record.enabled = true (the history is served from the "
                             "daemon's own recording: --record DIR)")
        if ep is not None and ep == self.publish.endpoint:
            raise ValueError(f"history.endpoint {ep} is publish.endpoint as well; give each its own port")
        return self
    ground: GroundConfig = Field(default_factory=GroundConfig, description="Ground-plane calibration: measures in mm")

    @field_validator("vehicle_id")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", v):
            raise ValueError(f"{v!r} may only hold letters, digits, '.', '_' and '-' (it is part of a topic)")
        return v


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> EdgeConfig:
    """Build the config: ``overrides`` (from flags, nested dicts) > CRACK_EDGE_* > TOML file > defaults."""
    try:
        return settings.load(EdgeConfig, env_prefix=ENV_PREFIX, toml=path, flags=overrides)
    except settings.SettingsError as e:
        raise ConfigError(str(e)) from None


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{'source.uri': x} -> {'source': {'uri': x}}, skipping None (flags left unset)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None:
            continue
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
