"""What long trainer work shows: a one-line bar on a terminal, a log line each quarter otherwise."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class Progress:
    """``update(done, loss=...)`` after each of ``total`` units; ``close()`` at the end."""

    def __init__(self, total: int, label: str, unit: str = "step") -> None:
        self.total, self.label, self.unit, self.start = total, label, unit, time.monotonic()
        self.tty = sys.stderr.isatty()
        self._last_quarter = -1

    def update(self, done: int, **figures: float) -> None:
        elapsed = time.monotonic() - self.start
        eta = elapsed / max(done, 1) * (self.total - done)
        shown = "".join(f" {k}={v:.4f}" for k, v in figures.items())
        if self.tty:
            filled = int(30 * done / self.total)
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}{shown} "
                             f"{elapsed:.0f}s eta={eta:.0f}s ")
            sys.stderr.flush()
            return
        quarter = 4 * done // self.total
        if quarter != self._last_quarter:
            self._last_quarter = quarter
            log.info("event=progress %s %s=%d/%d%s elapsed_s=%.0f eta_s=%.0f",
                     self.label, self.unit, done, self.total, shown, elapsed, eta)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
