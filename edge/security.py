"""CurveZMQ for the stream: key files, the server side (daemon, relay) and the client side (viewers).

Nothing home-made: ZeroMQ's CURVE mechanism encrypts and authenticates, pyzmq's ``zmq.auth``
writes and reads the certificates (the czmq format: ``NAME.key`` public, ``NAME.key_secret``
secret) and its :class:`ThreadAuthenticator` answers ZAP requests from an authorised-keys folder.

Three facts of libzmq shape this module:

* ZAP is asked once, during the handshake.  Reloading the folder therefore changes who may
  *connect*, not who *is* connected; a revoked viewer stays connected until its connection is cut.
  :meth:`CurveServer.reauthenticate` cuts every connection by unbinding and binding the endpoint
  again on the same socket (the socket, its queue and its subscriptions stay): every viewer
  reconnects after its reconnect interval (~0.2 s) and passes ZAP again, so an authorised viewer
  misses a fraction of a second of stream and a revoked one is refused.  The daemon does this only
  when a reload removed a key; adding a key disturbs nobody.
* A plaintext (NULL) peer never reaches ZAP: the CURVE server rejects it in the greeting.  Its
  refusal is seen only on the socket monitor, which is therefore watched too.
* Without a ZAP handler on the context, libzmq lets every CURVE client in; the authenticator is
  started before the socket binds.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger(__name__)

DAEMON_NAME = "daemon"
VIEWERS_DIR = "viewers"
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
# One line per refused peer address and reason within this window: a refused viewer retries every
# couple of seconds for ever, and the journal must stay readable.
REFUSAL_LOG_WINDOW_S = 60.0
REBIND_TIMEOUT_S = 2.0


class SecurityError(ValueError):
    """A key file, key folder or security setting that cannot be used; the message names it."""


# ------------------------------------------------------------------ key files

def create_keys(out: Path, viewers: Iterable[str] = ()) -> list[tuple[Path, bool]]:
    """Create ``out/daemon.key[_secret]`` and ``out/viewers/NAME.key[_secret]`` for each viewer.

    Existing pairs are kept (a secret key silently replaced would lock every viewer out), so the
    command can be run again to add viewers.  Returns (public file, created?) per pair.
    """
    out = Path(out)
    wanted = [(out, DAEMON_NAME)]
    for name in viewers:
        if not NAME_RE.match(name):
            raise SecurityError(f"--viewer {name!r}: use letters, digits, '.', '_' and '-' only")
        wanted.append((out / VIEWERS_DIR, name))
    done = []
    for folder, name in wanted:
        public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
        if public.exists() or secret.exists():
            done.append((public, False))
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _create_pair(folder, name)
        except OSError as e:
            raise SecurityError(f"{folder}: cannot write keys: {e.strerror or e}") from None
        done.append((public, True))
    return done


def _create_pair(folder: Path, name: str) -> None:
    # Written in a private (0700) temporary folder, then renamed into place: the secret file is
    # never readable by others, not even for a moment, whatever the umask.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
    try:
        public, secret = zmq.auth.create_certificates(tmp, name)
        os.chmod(secret, 0o600)
        os.chmod(public, 0o644)
        os.replace(secret, folder / f"{name}.key_secret")
        os.replace(public, folder / f"{name}.key")
    finally:
        for leftover in tmp.iterdir():
            leftover.unlink()
        tmp.rmdir()


def load_public(path: Path, what: str) -> bytes:
    """The public key of a certificate file (public or secret one); ``what`` names the setting."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except OSError:
        raise SecurityError(f"{what}: {path}: certificate file not found") from None
    except ValueError:
        raise SecurityError(f"{what}: {path}: not a ZeroMQ certificate (no public-key line)") from None
    if len(public) != 40:
        raise SecurityError(f"{what}: {path}: public-key is not a 40-character Z85 key")
    return public


def load_secret(path: Path, what: str) -> tuple[bytes, bytes]:
    """(public, secret) of a secret certificate file, refused when others may read it."""
    public = load_public(path, what)
    _, secret = zmq.auth.load_certificate(path)
    if not secret:
        raise SecurityError(f"{what}: {path}: holds no secret key (give the .key_secret file, not the .key)")
    if len(secret) != 40:
        raise SecurityError(f"{what}: {path}: secret-key is not a 40-character Z85 key")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecurityError(f"{what}: {path}: secret key is readable by others (mode {mode:o}); chmod 600 it")
    return public, secret


def authorised_keys(folder: Path, what: str) -> dict[bytes, str]:
    """Z85 public key -> certificate name for every ``*.key`` in ``folder``; any bad file refuses all (start-up)."""
    keys, skipped = read_authorised(folder, what)
    if skipped:
        raise SecurityError(skipped[0][1])
    return keys


def read_authorised(folder: Path, what: str) -> tuple[dict[bytes, str], list[tuple[str, str]]]:
    """The good ``*.key`` files of ``folder`` and (file name, reason) for each bad one.

    SecurityError only when the folder itself cannot be read: a reload must still apply what the
    good files say (a revoked key stays revoked) whatever else lies beside them.
    """
    if not folder.is_dir():
        raise SecurityError(f"{what}: {folder}: authorised-keys folder not found")
    keys: dict[bytes, str] = {}
    skipped: list[tuple[str, str]] = []
    try:
        paths = sorted(folder.glob("*.key"))
    except OSError as e:
        raise SecurityError(f"{what}: {folder}: cannot list the authorised-keys folder: {e.strerror or e}") from None
    for path in paths:
        try:
            keys[load_public(path, what)] = path.stem
        except SecurityError as e:
            skipped.append((path.name, str(e)))
        except OSError as e:  # unreadable (permissions), a folder named *.key...
            skipped.append((path.name, f"{what}: {path}: cannot read: {e.strerror or e}"))
    return keys, skipped


# ------------------------------------------------------------------ policy

def requires_security(endpoint: str) -> bool:
    """True when peers on other machines could reach ``endpoint`` (anything but loopback, ipc, inproc)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # '*', a network interface name or a host name: reachable from outside


def check_policy(endpoint: str, secured: bool, allow_insecure: bool, setting: str, keys: str = "") -> None:
    """Refuse (SecurityError) a reachable endpoint without keys, unless insecure was chosen (then warn)."""
    if secured or not requires_security(endpoint):
        return
    if not allow_insecure:
        keys = keys or f"{setting}.secret_key and {setting}.authorized_keys"
        raise SecurityError(
            f"{endpoint} is reachable from other machines and no keys are configured: set {keys} "
            f"(see docs/security.md), or {setting}.allow_insecure = true")
    log.warning("event=insecure endpoint=%s setting=%s.allow_insecure=true: anyone who reaches this port "
                "can read the stream unencrypted", endpoint, setting)


# ------------------------------------------------------------------ client side

@dataclass(frozen=True)
class ClientCurve:
    """A viewer's own key pair and the public keys of the servers it connects to.

    ``servers`` holds one key for every endpoint, or a single key shared by all of them.
    """
    public: bytes
    secret: bytes
    servers: tuple[bytes, ...]

    def apply(self, sock: zmq.Socket, index: int = 0) -> zmq.Socket:
        """Make ``sock`` a CURVE client of the ``index``-th server; must precede that connect().

        libzmq reads these options at each connect(), so one socket can reach several daemons,
        each with its own key.
        """
        sock.curve_serverkey = self.servers[index if len(self.servers) > 1 else 0]
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        return sock


def load_client(server_key: Path | Sequence[Path] | None, key: Path | None, server_what: str = "server_key",
                key_what: str = "key", endpoints: int = 1) -> ClientCurve | None:
    """Both settings or neither (None means plaintext); one server key, or one per endpoint."""
    servers = [server_key] if isinstance(server_key, (str, Path)) else list(server_key or [])
    if not servers and key is None:
        return None
    if not servers:
        raise SecurityError(f"{server_what}: {key_what} is set but not the daemon's public key file")
    if key is None:
        raise SecurityError(f"{key_what}: {server_what} is set but not this viewer's own secret key file")
    if len(servers) not in (1, endpoints):
        raise SecurityError(f"{server_what}: {len(servers)} keys for {endpoints} endpoints "
                            "(give one per endpoint, in the same order, or one for all)")
    public, secret = load_secret(Path(key), key_what)
    return ClientCurve(public, secret, tuple(load_public(Path(p), server_what) for p in servers))


# ------------------------------------------------------------------ server side

class _RefusalLog:
    """Rate-limited refusal lines: the first per (peer, reason) in a window, then a count."""

    def __init__(self, window_s: float = REFUSAL_LOG_WINDOW_S) -> None:
        self.window_s = window_s
        self.seen: dict[tuple[str, str, str], tuple[float, int]] = {}
        self.lock = threading.Lock()

    def refused(self, host: str, reason: str, **fields: Any) -> None:
        """Log a refusal of a peer at ``host`` (its IP address), unless the same was logged lately."""
        now = time.monotonic()
        reason = reason.replace(" ", "_")
        same = (host, reason, str(fields.get("key", "")))  # each unknown key is named at least once
        with self.lock:
            first, count = self.seen.get(same, (-1e18, 0))
            if now - first < self.window_s:
                self.seen[same] = (first, count + 1)
                return
            self.seen[same] = (now, 0)
        extra = "".join(f" {k}={v}" for k, v in fields.items())
        again = f" refused_since_last_line={count}" if count else ""
        log.warning("event=auth_refused peer=%s reason=%s%s%s", host, reason, extra, again)


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, plus one log line per decision naming the peer and the key."""

    def __init__(self, context: zmq.Context, names: dict[bytes, str], refusals: _RefusalLog) -> None:
        super().__init__(context, log=logging.getLogger(f"{__name__}.zap"))
        self.names = names
        self.refusals = refusals
        self._request: tuple[str, str, str] = ("?", "?", "")

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # Requests are answered one at a time on the ZAP thread, so the reply belongs to this request.
        address = bytes(msg[3]).decode(errors="replace") if len(msg) > 3 else "?"
        mechanism = bytes(msg[5]).decode(errors="replace") if len(msg) > 5 else "?"
        curve_key = mechanism == "CURVE" and len(msg) > 6 and len(msg[6]) == 32
        self._request = (address, mechanism, z85.encode(msg[6]).decode() if curve_key else "")
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        address, mechanism, key = self._request
        if status_code == b"200":
            log.info("event=auth_ok peer=%s mechanism=%s key=%s name=%s", address, mechanism, key,
                     self.names.get(key.encode(), "?"))
        else:
            self.refusals.refused(address, status_text.decode(errors="replace"), mechanism=mechanism, key=key or "-")
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",
           zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol_error",
           zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth_failed"}


class _HandshakeWatch(threading.Thread):
    """Reads the server socket's monitor: logs handshakes that fail before ZAP (plaintext peers).

    The monitor names the peer's file descriptor only on ACCEPTED and DISCONNECTED, and libzmq
    emits a failed handshake and its DISCONNECTED back to back, so the address is looked up at
    ACCEPTED and reported when that descriptor disconnects after a failure.
    """

    def __init__(self, monitor: zmq.Socket, refusals: _RefusalLog) -> None:
        super().__init__(name="curve-monitor", daemon=True)
        self.monitor = monitor
        self.refusals = refusals
        self.stop_event = threading.Event()
        self.peers: dict[int, tuple[str, int]] = {}
        self.failed: tuple[str, int] | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                if not self.monitor.poll(100):
                    continue
                event = parse_monitor_message(self.monitor.recv_multipart())
                if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                    return
                self.handle(int(event["event"]), int(event["value"]))
        except zmq.ZMQError as e:
            log.debug("event=monitor_stopped error=%s", e)
        finally:
            self.monitor.close(0)

    def handle(self, event: int, value: int) -> None:
        if event == zmq.EVENT_ACCEPTED:
            self.peers[value] = _peer_name(value)
        elif event in _FAILED:
            self.failed = (_FAILED[event], value)
        elif event == zmq.EVENT_DISCONNECTED:
            host, port = self.peers.pop(value, ("?", 0))
            if self.failed is not None:
                reason, detail = self.failed
                self.failed = None
                # ZAP refusals were logged by the authenticator, with the key.
                # A plaintext peer is caught by whichever side reads the other's greeting first:
                # here (mechanism mismatch) or at the peer, which hangs up (a failure with an errno).
                if reason == "protocol_error":
                    why = "mechanism_mismatch(plaintext_or_other_security)" \
                        if detail == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH else f"protocol_error({detail:#x})"
                    self.refusals.refused(host, why, port=port)
                elif reason == "handshake_failed":
                    self.refusals.refused(host, f"handshake_failed(errno={detail})", port=port)


def _peer_name(fd: int) -> tuple[str, int]:
    # The descriptor belongs to libzmq: look at a duplicate, never close or touch the original.
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            host, port = s.getpeername()[:2]
            return str(host), int(port)
    except (OSError, ValueError):  # already closed, or not an IP socket (ipc://)
        return "?", 0


@dataclass
class Reload:
    added: list[str]
    removed: list[str]
    skipped: list[str] = field(default_factory=list)   # bad files, named; the good ones were applied
    refused: str = ""                                  # why nothing was applied (the folder is unreadable)


class CurveServer:
    """The server side: own key pair, authorised-keys folder, ZAP thread and handshake monitor."""

    def __init__(self, secret_key: Path, authorized_keys: Path, setting: str = "security") -> None:
        self.setting = setting
        self.secret_path = Path(secret_key)
        self.folder = Path(authorized_keys)
        self.public, self.secret = load_secret(self.secret_path, f"{setting}.secret_key")
        self.names = authorised_keys(self.folder, f"{setting}.authorized_keys")
        self.refusals = _RefusalLog()
        self.auth: _Authenticator | None = None
        self.watch: _HandshakeWatch | None = None
        self.more_watches: list[_HandshakeWatch] = []

    def attach(self, sock: zmq.Socket) -> zmq.Socket:
        """Make ``sock`` a CURVE server guarded by ZAP; must precede bind().

        A second socket of the same context (the daemon's history service) shares the one ZAP
        thread, so the same authorised viewers, reloads and refusal log apply to both.
        """
        if self.auth is None:
            self.auth = _Authenticator(sock.context, self.names, self.refusals)
            self.auth.start()
            self._authorise(self.names)
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
                                          | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                          | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        watch = _HandshakeWatch(monitor, self.refusals)
        watch.start()
        if self.watch is None:
            self.watch = watch
        else:
            self.more_watches.append(watch)
        log.info("event=curve_server public_key=%s authorised=%d folder=%s", self.public.decode(),
                 len(self.names), self.folder)
        return sock

    def reload(self) -> Reload:
        """Read the authorised folder again (safe from any thread: the socket is not touched).

        Fails closed: a bad file is skipped and named (``event=key_skipped``) and the good files
        still replace the authorised set, so a revoked key is dropped whatever lies beside it.  Only
        a folder that cannot be read at all leaves the set as it was (``refused`` says why).
        """
        assert self.auth is not None, "attach() first"
        try:
            names, skipped = read_authorised(self.folder, f"{self.setting}.authorized_keys")
        except SecurityError as e:
            log.error("event=reload_refused error=%s (the authorised keys are unchanged)", e)
            return Reload([], [], refused=str(e))
        for name, reason in skipped:
            log.warning("event=key_skipped file=%s error=%s", name, reason)
        old = self.names
        self._authorise(names)
        result = Reload(sorted(names[k] for k in names.keys() - old.keys()),
                        sorted(old[k] for k in old.keys() - names.keys()), [name for name, _ in skipped])
        log.info("event=keys_reloaded authorised=%d added=%s removed=%s skipped=%s", len(names),
                 ",".join(result.added) or "-", ",".join(result.removed) or "-", ",".join(result.skipped) or "-")
        return result

    def _authorise(self, names: dict[bytes, str]) -> None:
        # The ZAP thread answers from ``certs``; set it from the keys read here, not from pyzmq's own
        # folder reader, which keeps the old set (fails open) when any one file is bad.
        assert self.auth is not None
        self.auth.allow_any = False
        self.auth.certs["*"] = {key: True for key in names}
        self.auth.names = self.names = names

    def reauthenticate(self, sock: zmq.Socket) -> bool:
        """Cut every connection so that each passes ZAP again; call only from the socket's thread.

        Unbinding ends the sessions the listener accepted; binding the same endpoint again lets
        authorised peers reconnect.  False (logged) if the endpoint could not be bound again.
        """
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        sock.unbind(endpoint)
        deadline = time.monotonic() + REBIND_TIMEOUT_S
        while True:
            try:
                sock.bind(endpoint)
                break
            except zmq.ZMQError as e:  # the old listener closes asynchronously
                if e.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    log.error("event=rebind_failed endpoint=%s error=%s", endpoint, e)
                    return False
                time.sleep(0.02)
        log.info("event=connections_cut endpoint=%s reason=keys_revoked", endpoint)
        return True

    def close(self) -> None:
        """Stop the monitor and ZAP threads; call after closing the socket, before terminating the context."""
        for watch in [self.watch, *self.more_watches]:
            if watch is not None:
                watch.stop_event.set()
                watch.join(2.0)
        self.watch, self.more_watches = None, []
        if self.auth is not None:
            if self.auth.is_alive():
                self.auth.pipe.sndtimeo = 1000  # a PAIR send to a dead thread would wait for ever
                self.auth.stop()
            else:
                log.error("event=zap_thread_died (every CURVE handshake was refused since)")
                self.auth.pipe.close(0)
                self.auth.pipe = None
                super(ThreadAuthenticator, self.auth).stop()
            self.auth = None
