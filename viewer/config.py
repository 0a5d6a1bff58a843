"""The viewer's settings: one model, read from flags > CRACK_VIEWER_* env > TOML file > defaults.

Shared settings sit at the top level (``connect``, ``subscribe``...); each command has its own
section (``[watch]``, ``[record]``, ``[replay]``, ``[relay]``), and its env names follow the
section path: ``CRACK_VIEWER_WATCH__TILE_WIDTH=800``.  The shared loader (:mod:`common.settings`)
refuses unknown keys and bad values at start-up, all of them at once, each naming its key and
where it came from.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common import settings
from common.settings import NoDecode
from edge.wire import Defaults

ENV_PREFIX = "CRACK_VIEWER_"
_ENDPOINT = re.compile(r"^(tcp|ipc|inproc|pgm|epgm|ws|wss)://\S+$")


class ConfigError(ValueError):
    """Settings that cannot be used; the message names the key and its source."""


def _split_list(value: Any) -> Any:
    # Env and flags give "a,b" or "a b"; TOML gives a real list.
    if isinstance(value, str):
        return [v for v in re.split(r"[,\s]+", value.strip()) if v]
    return value


def _check_endpoint(value: str) -> str:
    if not _ENDPOINT.match(value):
        raise ValueError(f"{value!r} is not a ZeroMQ endpoint (e.g. tcp://127.0.0.1:5555)")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class WatchConfig(_Section):
    headless: bool = Field(False, description="Render to files under `out` instead of a window")
    out: Path | None = Field(None, description="Headless output folder (PNG per frame, or viewer.mp4)")
    format: Literal["png", "mp4"] = Field("png", description="Headless output: one PNG per frame, or one MP4")
    count: int | None = Field(None, ge=1, description="Stop after this many rendered frames (mask messages)")
    duration: float | None = Field(None, gt=0, description="Stop after this many seconds")
    refresh_hz: float = Field(30.0, gt=0, le=240, description="Window repaint and key-poll rate")
    tile_width: int = Field(640, ge=160, le=4096, description="Width in pixels of each vehicle's tile")
    columns: int | None = Field(None, ge=1, le=16, description="Tiles per row (default: a near-square grid)")
    snapshot_dir: Path = Field(Path("."), description="Folder where the `s` key saves snapshots")
    title: str = Field("crack-viewer", description="Window title")
    mp4_fps: float = Field(10.0, gt=0, le=120, description="Frame rate written into a headless MP4")
    backfill: bool = Field(True, description=(
        "Ask the vehicle's history service for masks missed, so the figures (drops, recovered) count them; "
        "they are counted, not painted"))


MIN_FILE_MB = 1 / 16


class RecordConfig(_Section):
    out: Path | None = Field(None, description="Recording folder (rotated files <prefix>-NNNNNN.crec)")
    prefix: str = Field("rec", pattern=r"^[A-Za-z0-9._-]+$", description="File name prefix of the recording's files")
    count: int | None = Field(None, ge=1, description="Stop after this many messages (any kind)")
    duration: float | None = Field(None, gt=0, description="Stop after this many seconds")
    # A file must hold its header and a record or two: below 64 KiB a file per message is no recording.
    max_file_mb: float = Field(64.0, ge=MIN_FILE_MB, le=4096, description="Start a new file past this size (MiB, >= 1/16)")
    max_total_mb: float = Field(1024.0, ge=MIN_FILE_MB, description="Delete the oldest files past this total (MiB)")
    backfill: bool = Field(True, description=(
        "Ask the vehicle's history service (the `history` field of its status) for masks missed while "
        "cut off or not yet running, and write them in marked as backfilled"))

    @model_validator(mode="after")
    def _sizes(self) -> "RecordConfig":
        if self.max_total_mb < self.max_file_mb:
            raise ValueError(f"max_total_mb={self.max_total_mb} is smaller than max_file_mb={self.max_file_mb}")
        return self


class ReplayConfig(_Section):
    file: Path | None = Field(None, description="Recording to publish: one .crec file or a recording folder")
    bind: str = Field(Defaults.ENDPOINT, description="Endpoint the replay's PUB socket binds")
    speed: float = Field(1.0, gt=0, le=1000, description="Time factor: 2 plays twice as fast")
    loop: bool = Field(False, description="Start again at the end, until stopped")
    wait_subscriber_s: float = Field(5.0, ge=0, description="Wait this long for a first subscriber before sending")
    sndhwm: int = Field(10000, ge=1, description="Messages queued per subscriber (a replay should not drop)")

    _bind = field_validator("bind")(_check_endpoint)


class RelayConfig(_Section):
    bind: str = Field("tcp://127.0.0.1:5556", description="Endpoint the relay's XPUB binds for viewers")
    authorized_keys: Path | None = Field(None, description=(
        "Folder of the public certificates (*.key) of viewers allowed on the relay; makes the relay's XPUB a "
        "CurveZMQ server whose key pair is `key` (viewers then use the relay's public certificate as server_key)"))
    allow_insecure: bool = Field(False, description=(
        "Relay unencrypted to anyone on a non-loopback bind without authorized_keys (refused otherwise, exit 78)"))

    _bind = field_validator("bind")(_check_endpoint)


class ViewerConfig(BaseModel):
    """Everything `crack-viewer` reads; validated once at start-up and passed down."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    config: Path | None = Field(None, description="TOML file read before env and flags")
    connect: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [Defaults.ENDPOINT], min_length=1,
        description="Daemon (or relay) endpoints to subscribe to")
    subscribe: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [""], description="Topic prefixes to subscribe to ('' for all, e.g. mask/truck-7)")
    rcvhwm: int = Field(Defaults.RCVHWM, ge=1, description="Messages queued per connection before dropping")
    server_key: Annotated[list[Path], NoDecode] = Field(default_factory=list, description=(
        "Public certificate of the daemon (or relay) connected to, e.g. daemon.key: connect as a CurveZMQ "
        "client; one for all endpoints, or one per `connect` entry in the same order"))
    key: Path | None = Field(None, description=(
        "This viewer's own secret certificate (NAME.key_secret from `crack-edge keys`, mode 0600), "
        "whose public half is in the daemon's authorised folder"))
    stale_after_s: float = Field(Defaults.STALE_AFTER_S, gt=0, description="Silence after which a vehicle is stale")
    loop: Literal["auto", "asyncio", "uvloop"] = Field("auto", description="Event loop; auto picks uvloop if installed")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging threshold")
    watch: WatchConfig = Field(default_factory=WatchConfig, description="`crack-viewer watch` settings")
    record: RecordConfig = Field(default_factory=RecordConfig, description="`crack-viewer record` settings")
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="`crack-viewer replay` settings")
    relay: RelayConfig = Field(default_factory=RelayConfig, description="`crack-viewer relay` settings")

    _split = field_validator("connect", "subscribe", "server_key", mode="before")(_split_list)

    @field_validator("connect")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        return [_check_endpoint(v) for v in value]

    def require(self, command: str) -> None:
        """Check what `command` needs beyond the types; ConfigError names the missing key."""
        if command == "watch" and self.watch.headless and self.watch.out is None:
            raise ConfigError("watch.out: --headless needs --out DIR")
        if command == "record" and self.record.out is None:
            raise ConfigError("record.out: record needs --out DIR")
        if command == "replay" and self.replay.file is None:
            raise ConfigError("replay.file: replay needs a recording FILE or folder")
        if command in ("watch", "record", "relay"):
            from edge.security import SecurityError, check_policy

            try:
                self.client_curve()
                if command == "relay":
                    if self.relay.authorized_keys is not None and self.key is None:
                        raise SecurityError("key: relay.authorized_keys needs the relay's own key pair in `key`")
                    check_policy(self.relay.bind, self.relay.authorized_keys is not None, self.relay.allow_insecure,
                                 "relay", keys="key and relay.authorized_keys")
            except SecurityError as e:
                raise ConfigError(str(e)) from None

    def client_curve(self) -> Any:
        """The CurveZMQ client keys (edge.security.ClientCurve), or None for plaintext; SecurityError if unusable."""
        from edge.security import load_client

        return load_client(self.server_key or None, self.key, endpoints=len(self.connect))


def load_config(flags: dict[str, Any] | None = None) -> ViewerConfig:
    """Build and validate the settings; ``flags`` is a nested dict of the options given (None = unset)."""
    flags = settings.drop_none(flags or {})
    toml = flags.get("config") or os.environ.get(f"{ENV_PREFIX}CONFIG")
    try:
        return settings.load(ViewerConfig, env_prefix=ENV_PREFIX, toml=toml, flags=flags)
    except settings.SettingsError as e:
        raise ConfigError(str(e)) from None
