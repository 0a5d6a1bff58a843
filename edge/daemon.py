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

from common import exits
from edge import loader, systemd, wire
from edge.config import EdgeConfig
from edge.loader import StartupError

log = logging.getLogger(__name__)

TICK_S = 0.1

# Model loading, security, publisher and recorder live in edge.loader (shared with check and bench).


class Daemon:
    def __init__(self, cfg: EdgeConfig) -> None:
        self.cfg = cfg
        self.run_id = uuid.uuid4().hex
        self.should_exit = False
        self.force_exit = False
        self.exit_code = exits.OK
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
        self.history: Any = None
        self.history_index: Any = None

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

        from edge.capture import SourceSupervisor

        cfg = self.cfg
        cv2.setNumThreads(cfg.pipeline.cv2_threads)
        spec = loader.source_spec(cfg)
        self.security = loader.open_security(cfg)
        model = loader.load_model(cfg)
        self.backend = model.backend
        self.model_sha256, self.size = model.sha256, model.size
        self.position = loader.open_position_source(cfg)
        if cfg.history.endpoint is not None:
            from edge.history import HistoryIndex

            self.history_index = HistoryIndex(self.run_id)  # follows the recording, record by record
        recorder = loader.open_recorder(cfg, observer=self.history_index)
        self.ctx, self.sock = loader.open_publisher(cfg, self.security)
        self.history = loader.open_history(cfg, self.ctx, self.security, self.history_index,
                                           recording=lambda: self.pipeline is not None and self.pipeline.recorder is not None)
        every = loader.every_frame(cfg, spec)
        self.pipeline = loader.build_pipeline(cfg, model, self.sock, self.run_id, every=every, recorder=recorder,
                                              position=self.position)
        if self.position is not None:
            self.position.start()
        self.supervisor = SourceSupervisor(spec, cfg.source, self.pipeline.put_frame)
        self.pipeline.start()
        if self.history is not None:
            self.history.start()
        self.state = "running"
        log.info("ready vehicle_id=%s run_id=%s backend=%s model=%s sha256=%s size=%s threshold=%s endpoint=%s "
                 "source=%s kind=%s mode=%s history=%s", cfg.vehicle_id, self.run_id, self.backend.name, model.path,
                 self.model_sha256[:12], self.size, model.threshold, cfg.publish.endpoint, spec.uri, spec.kind,
                 "every" if every else "latest", cfg.history.endpoint or "-")
        systemd.notify("READY=1\nSTATUS=model loaded, socket bound, starting the source")

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
            self.exit_code, self.should_exit = exits.SOFTWARE, True
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
        from edge.reload import write_answer

        if self.security is None:
            log.info("SIGHUP: no keys configured, nothing to reload")
            write_answer(True, "no keys configured, nothing to reload")
            return
        result = self.security.reload()
        write_answer(not result.refused, result.refused or (
            f"keys reloaded: added={','.join(result.added) or '-'} removed={','.join(result.removed) or '-'} "
            f"skipped={','.join(result.skipped) or '-'}"))
        if result.refused:
            systemd.notify(f"STATUS=reload refused: {result.refused[:200]}")
        elif result.skipped:
            systemd.notify(f"STATUS=keys reloaded; skipped bad files: {','.join(result.skipped)[:200]}")
        if result.removed:
            # ZAP is asked only at connect: cut every connection so that each is authorised again.
            self.pipeline.call_on_socket(self.security.reauthenticate)
            if self.history is not None:
                self.history.reauthenticate()

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

    def status_header(self, now: float) -> wire.StatusHeader:
        p, s = self.pipeline, self.supervisor
        if self.size == "native":
            h, w = p.counters.last_size
        else:
            h, w = self.size  # type: ignore[misc]
        return wire.StatusHeader(
            vehicle_id=self.cfg.vehicle_id, run_id=self.run_id, seq=0, t_publish=time.time(),
            fps=round(self.fps(), 3),
            drops={**p.drops, "unreadable": s.unreadable, "downscaled": sum(pre.downscaled for pre in p.pres)},
            source={**s.snapshot(), "mode": "every" if p.every_frame else "latest"},
            backend=self.backend.name, backend_info=self.backend.describe(),
            model_sha256=self.model_sha256, width=int(w), height=int(h),
            state=self.state, uptime_s=round(now - self.started, 3),
            published=p.counters.published, last_frame_index=p.counters.last_frame_index,
            stages_ms=p.times.summary(),
            record={"enabled": self.cfg.record.enabled, "active": p.recorder is not None,
                    "errors": p.counters.record_errors},
            position=None if self.position is None else self.position.status(),
            **self.history_fields(),
        )

    def history_fields(self) -> dict[str, Any]:
        """Where a viewer that missed masks asks for them, and which seqs it may ask for."""
        published = self.pipeline.seq["mask"]
        first = self.history_index.span()[0] if self.history_index is not None else None
        fields: dict[str, Any] = {"history": (self.cfg.history.advertise or self.history.endpoint) if self.history is not None else None,
                                  "first_mask_seq": first, "last_mask_seq": published - 1 if published else None}
        if self.history is not None:
            fields["history_stats"] = self.history.status()
        return fields

    @staticmethod
    def status_line(h: wire.StatusHeader) -> str:
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
        if self.history is not None:
            self.history.stop(timeout=1.0)  # its socket is closed before the context is terminated
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
