"""A tiny progress bar on stderr (silent when stderr is not a terminal unless forced)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Callable as ``progress(done, total)``; prints a bar with rate and ETA to stderr."""

    def __init__(self, label: str, enabled: bool | None = None, min_interval: float = 0.1) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.min_interval = min_interval
        self._start = time.perf_counter()
        self._last = 0.0

    def __call__(self, done: int, total: int, extra: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < total and now - self._last < self.min_interval:
            return
        self._last = now
        elapsed = now - self._start
        frac = done / max(total, 1)
        bar = "#" * int(frac * 24)
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        sys.stderr.write(
            f"\r{self.label} [{bar:<24}] {done}/{total} {elapsed:5.1f}s eta {eta:5.1f}s {extra}"
        )
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
