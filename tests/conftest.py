"""Fixtures shared by every test package: a real small model, real sockets, the real daemon.

* ``student_onnx``: the registered student with random weights, exported by torch (input
  ``image``, output ``crack_prob``, dynamic H/W, opset 17) with its card, once per session.
* ``endpoint`` / ``subscriber``: random loopback ports, sockets closed with linger 0, every
  receive bounded by a timeout (a silent daemon fails a test instead of hanging CI).
* ``small_video`` / ``image_folder``: tiny real media written with OpenCV.
* ``edge_daemon``: starts ``python -m edge.cli run`` as a subprocess, kills it at teardown and
  prints its log when a test fails.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import zmq

from media import write_images, write_video

REPO = Path(__file__).resolve().parents[1]
MODEL_SIZE = 64


@pytest.fixture(scope="session")
def student_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models.create_model('student') with random weights as ONNX + card (input_size 64x64)."""
    pytest.importorskip("torch", reason="torch is needed to export the test model")
    from trainer.export import export_untrained

    return export_untrained(tmp_path_factory.mktemp("model") / "student.onnx", input_size=(MODEL_SIZE, MODEL_SIZE),
                            name="student")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


class Subscriber:
    """A plain pyzmq SUB socket; decoding uses only edge.wire (the protocol page's code)."""

    def __init__(self, ctx: zmq.Context, endpoint: str, topics: tuple[bytes, ...] = (b"",), rcvhwm: int = 1000) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t)
        self.sock.connect(endpoint)

    def recv_raw(self, timeout: float) -> list[bytes] | None:
        if self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            return self.sock.recv_multipart()
        return None

    def recv(self, timeout: float) -> Any:
        from edge import wire

        frames = self.recv_raw(timeout)
        return None if frames is None else wire.decode(frames)

    def until(self, pred: Callable[[Any], bool], timeout: float) -> Any:
        """The first message satisfying ``pred`` within ``timeout`` s, else None."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is not None and pred(msg):
                return msg
        return None

    def collect(self, n: int, timeout: float, kind: str = "mask") -> list[Any]:
        """Up to ``n`` messages of ``kind`` within ``timeout`` s."""
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is not None and msg.kind == kind:
                out.append(msg)
        return out


@pytest.fixture
def zmq_ctx() -> Iterator[zmq.Context]:
    """A context whose sockets are all closed at teardown (linger 0: nothing can hang)."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def subscriber(zmq_ctx: zmq.Context) -> Callable[..., Subscriber]:
    def make(endpoint: str, topics: tuple[bytes, ...] = (b"",), rcvhwm: int = 1000) -> Subscriber:
        return Subscriber(zmq_ctx, endpoint, topics, rcvhwm)
    return make


@pytest.fixture
def make_video(tmp_path: Path) -> Callable[..., Path]:
    """``make_video(name, n, size=(W, H))`` writes a clip under the test's tmp_path."""
    return lambda name, n, size=(96, 64), fps=20.0: write_video(tmp_path / name, n, size, fps)


@pytest.fixture
def make_images(tmp_path: Path) -> Callable[..., Path]:
    """``make_images(name, n)`` writes a folder of PNGs under the test's tmp_path."""
    return lambda name, n, size=(96, 64): write_images(tmp_path / name, n, size)


@pytest.fixture
def small_video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mp4", 24)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images", 6)


class DaemonProc:
    """A running ``crack-edge run``; its log goes to a file so a full pipe never blocks it."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", *args], cwd=REPO, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def edge_daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., DaemonProc]]:
    """Factory: ``edge_daemon(*args, env={...})`` runs the real daemon (ONNX Runtime, CPU, 1 thread)."""
    procs: list[DaemonProc] = []

    def start(*args: str, env: dict[str, str] | None = None) -> DaemonProc:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CRACK_EDGE_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        full_env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")})
        full_env.update(env or {})
        p = DaemonProc(list(args), full_env, tmp_path / f"daemon-{len(procs)}.log")
        procs.append(p)
        return p

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for p in procs:
        p.close()
        if failed:
            print(f"--- daemon log {p.log_path} (args {p.args}) ---\n{p.log()[-6000:]}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
