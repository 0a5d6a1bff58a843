"""`crack-viewer watch`: subscribe, keep per-vehicle state, draw to a window or to files.

``serve()`` is ``startup()``, ``main_loop()``, ``shutdown()``.  Receiving runs as one task that
only decodes and updates state (and, headless, writes one image per mask message); one tick
owns everything periodic: staleness, repainting the window, keys, the stop conditions and the
stats line.  Signals only set flags.
"""
from __future__ import annotations

import asyncio
import logging
import time

from viewer.backfill import Backfiller, mask_ident
from viewer.config import ViewerConfig
from viewer.headless import HeadlessSink
from viewer.render import render_fleet
from viewer.state import FleetState
from viewer.subscriber import Decoder, SubscriberApp

log = logging.getLogger(__name__)

STATS_EVERY_S = 10.0


class WatchApp(SubscriberApp):
    def __init__(self, cfg: ViewerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wcfg = cfg.watch
        self.state = FleetState(cfg.stale_after_s)
        self.decoder = Decoder()
        self.paused = False
        self.rendered = 0
        self.masks = 0
        self._dirty = True
        self._last_img = None
        self._last_paint = 0.0
        self._first_vehicles: bool | None = None

    # ------------------------------------------------------------ lifecycle

    def startup(self) -> None:
        if not self.wcfg.headless:
            from viewer.window import check_display

            check_display()  # before any socket: nothing to clean up when there is no screen
        self.t0 = time.monotonic()
        if self.wcfg.headless:
            assert self.wcfg.out is not None
            self.sink: HeadlessSink | None = HeadlessSink(self.wcfg.out, self.wcfg.format, self.wcfg.mp4_fps)
            self.window = None
        else:
            from viewer.window import Window  # HighGUI only when a window is wanted

            self.sink = None
            self.window = Window(self.wcfg.title)
        self.backfill = Backfiller(self._recovered, self.cfg.connect, self.cfg.client_curve(), self.cfg.stale_after_s,
                                   enabled=self.wcfg.backfill, from_start=False)
        self.open_subscriber()
        log.info("event=watch_started endpoints=%s mode=%s", ",".join(self.cfg.connect),
                 "headless" if self.sink else "window")

    async def main_loop(self) -> None:
        period = 1.0 / self.wcfg.refresh_hz
        next_stats = time.monotonic() + STATS_EVERY_S
        while not self.should_exit:
            await asyncio.sleep(period)
            now = time.monotonic()
            self.backfill.tick(now)
            if self.state.tick(now):
                self._dirty = True
            if self.window is not None:
                self._paint(now)
                self._handle(self.window.poll())
            if self.wcfg.duration is not None and now - self.t0 >= self.wcfg.duration:
                log.info("event=duration_reached seconds=%.1f", now - self.t0)
                self.should_exit = True
            if self.receiver.done():
                exc = self.receiver.exception() if not self.receiver.cancelled() else None
                log.error("event=receiver_stopped error=%r", exc)
                self.exit_code = 1
                self.should_exit = True
            self.check_refused()
            if now >= next_stats:
                next_stats = now + STATS_EVERY_S
                self._log_stats()

    async def shutdown(self) -> None:
        await self.close_subscriber()
        self.backfill.close()
        if self.sink is not None:
            self.sink.close()
        if self.window is not None:
            self.window.close()
        self._log_stats(final=True)

    # ------------------------------------------------------------ work

    def on_frames(self, frames: list[bytes], t_wall: float) -> None:
        if self.should_exit:
            return  # --count reached: the burst still queued in the socket writes no more pictures
        self.backfill.observe(frames)
        msg = self.decoder(frames)
        if msg is None:
            return
        if msg.frame_error:
            self.decoder.reject("bad_jpeg", f"frame of {msg.vehicle_id} seq={msg.header['seq']}: {msg.frame_error}")
        now = time.monotonic()
        self.state.on_message(msg, t_wall, now)
        self._dirty = True
        if msg.kind != "mask":
            return
        self.masks += 1
        if self.sink is not None:
            views = self.state.views(now)
            self.sink.write(render_fleet(views, self.wcfg.tile_width, self.wcfg.columns, self._footer()),
                            views, f"mask/{msg.vehicle_id}/{msg.header['seq']}", t_wall)
            self.rendered += 1
        if self.wcfg.count is not None and self.masks >= self.wcfg.count:
            self.should_exit = True

    def _recovered(self, frames: list[bytes], t_recv: float) -> None:
        ident = mask_ident(frames)
        if ident is not None:
            self.state.on_backfilled(ident[0], ident[1])
            self._dirty = True

    def _paint(self, now: float) -> None:
        # Repaint on news, and once a second anyway so "stale for N s" keeps counting.
        if self.paused or not (self._dirty or now - self._last_paint >= 1.0):
            return
        self._last_img = render_fleet(self.state.views(now), self.wcfg.tile_width, self.wcfg.columns, self._footer())
        assert self.window is not None
        self.window.show(self._last_img)
        if self.rendered == 0 or (self._first_vehicles is False and self.state.vehicles):
            # One line when the window first shows a picture, and when it first shows a vehicle.
            self._first_vehicles = bool(self.state.vehicles)
            log.info("event=window_painted vehicles=%d size=%dx%d", len(self.state.vehicles),
                     self._last_img.shape[1], self._last_img.shape[0])
        self.rendered += 1
        self._dirty = False
        self._last_paint = now

    def _handle(self, action: str | None) -> None:
        if action == "quit":
            self.should_exit = True
        elif action == "pause":
            self.paused = not self.paused
            log.info("event=%s", "paused" if self.paused else "resumed")
            if self.paused and self._last_img is not None and self.window is not None:
                self.window.show(render_fleet(self.state.views(time.monotonic()), self.wcfg.tile_width,
                                              self.wcfg.columns, self._footer()))
        elif action == "snapshot" and self._last_img is not None:
            from viewer.window import save_snapshot

            try:
                save_snapshot(self._last_img, self.wcfg.snapshot_dir)
            except OSError as e:
                log.error("event=snapshot_failed error=%s", e)

    def _footer(self) -> str:
        bad = self.decoder.rejected
        reasons = ", ".join(f"{k} {n}" for k, n in bad.most_common(3))
        text = (f"{len(self.cfg.connect)} endpoint(s)  vehicles {len(self.state.vehicles)}"
                f"  received {self.sub.received}  bad {sum(bad.values())}" + (f" ({reasons})" if reasons else ""))
        return text + ("  PAUSED" if self.paused else "")

    def _log_stats(self, final: bool = False) -> None:
        bad = " ".join(f"bad_{k}={n}" for k, n in sorted(self.decoder.rejected.items()))
        log.info("event=%s received=%d accepted=%d rejected=%d rendered=%d links_up=%d links_down=%d "
                 "reconnects=%d refusals=%d %s", "watch_summary" if final else "stats", self.sub.received,
                 self.decoder.accepted, self.decoder.rejected_total, self.rendered, self.sub.links_up,
                 self.sub.links_down, self.sub.reconnects, self.sub.refusals, bad)
        for v in self.state.vehicles.values():
            log.info("event=vehicle_stats vehicle=%s run_id=%s masks=%d statuses=%d drops=%d recovered=%d restarts=%d "
                     "stale=%s stale_events=%d", v.vehicle_id, v.run_id, v.masks, v.statuses, v.drops, v.recovered,
                     v.restarts, v.stale, v.stale_events)
