"""Fixtures for the viewer's tests: real sockets on random loopback ports, every wait bounded.

``pub``/``make_pub`` give test publishers (see viewer_testkit.Publisher); ``cli`` runs
``crack-viewer`` as a user would, in a subprocess that is killed at teardown; ``xvfb`` starts a
virtual display for the window tests (skipped, with the reason, where Xvfb is absent).
"""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from typing import Any, Callable, Iterator

import pytest
import zmq

from viewer_testkit import FUZZ_COUNTS, Messages, Proc, Publisher


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FUZZ_COUNTS:
        terminalreporter.section("viewer decoder fuzzing")
        for name, n in FUZZ_COUNTS.items():
            terminalreporter.write_line(f"{name}: {n} hypothesis cases ran")
        terminalreporter.write_line(f"total: {sum(FUZZ_COUNTS.values())} cases")


@pytest.fixture
def messages() -> Callable[..., Messages]:
    return Messages


@pytest.fixture
def pub(zmq_ctx: zmq.Context) -> Iterator[Publisher]:
    p = Publisher(zmq_ctx)
    yield p
    p.close()


@pytest.fixture
def make_pub(zmq_ctx: zmq.Context) -> Iterator[Callable[..., Publisher]]:
    made: list[Publisher] = []

    def make(ep: str | None = None) -> Publisher:
        made.append(Publisher(zmq_ctx, ep))
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.fixture
def cli() -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Proc:
        procs.append(Proc([str(a) for a in args], env))
        return procs[-1]

    yield start
    for pr in procs:
        if pr.p.poll() is None:
            pr.p.kill()
            pr.p.wait(10)


# ------------------------------------------------------------ Xvfb


@pytest.fixture
def xvfb() -> Iterator[str]:
    """A virtual X display (``:N``) for a real OpenCV window; skipped, with the reason, without Xvfb."""
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb; .ci/run installs it)")
    # -displayfd: Xvfb picks a free display itself and writes its number once it accepts clients,
    # so parallel test runs (and other engineers' Xvfb) never collide.
    rfd, wfd = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(wfd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(wfd,))
    os.close(wfd)
    number = b""
    deadline = time.monotonic() + 15
    try:
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([rfd], [], [], 0.2)
            if ready:
                chunk = os.read(rfd, 16)
                if not chunk:
                    break
                number += chunk
    finally:
        os.close(rfd)
    if not number.strip().isdigit():
        proc.kill()
        err = proc.communicate()[1].decode(errors="replace")[-500:]
        pytest.fail(f"Xvfb is installed but did not start: {err}")
    display = f":{int(number)}"
    yield display
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
