"""Timing and memory probes for the bench: a per-call timer, order statistics, an RSS sampler."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ddpm_rt.machine import rss_bytes

ModelFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class TimedModel:
    """Wraps ``model(x, t)`` and records when each call starts and ends (perf_counter, preallocated).

    Driving the shared loop through it separates the denoiser's share of a run from the
    loop's own work (coefficient updates, noise, Python) inside the *same* run.
    """

    def __init__(self, model: ModelFn, steps: int) -> None:
        self.model = model
        self.starts = np.zeros(steps, dtype=np.float64)
        self.ends = np.zeros(steps, dtype=np.float64)
        self.i = 0

    def reset(self) -> None:
        self.i = 0

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        i = self.i
        self.starts[i] = time.perf_counter()
        out = self.model(x, t)
        self.ends[i] = time.perf_counter()
        self.i = i + 1
        return out

    def call_times(self) -> np.ndarray:
        """Seconds spent inside the denoiser, per step."""
        return self.ends[: self.i] - self.starts[: self.i]

    def step_times(self, loop_end: float) -> np.ndarray:
        """Seconds per whole step (call + update): from one call's start to the next (or the loop end)."""
        starts = self.starts[: self.i]
        return np.diff(np.append(starts, loop_end))


def summary(values: Sequence[float] | np.ndarray, scale: float = 1.0) -> dict[str, float]:
    """median, p10, p90, min, max and the relative spread (p90 - p10) / median, times `scale`."""
    v = np.asarray(values, dtype=np.float64) * scale
    if v.size == 0:
        return {}
    p10, med, p90 = np.percentile(v, [10, 50, 90])
    return {
        "median": float(med),
        "p10": float(p10),
        "p90": float(p90),
        "min": float(v.min()),
        "max": float(v.max()),
        "spread": float((p90 - p10) / med) if med > 0 else 0.0,
        "n": int(v.size),
    }


class RssSampler:
    """Samples this process's RSS every `interval` s on a thread; `.peak` is the largest seen.

    The kernel's own high-water mark (getrusage) never goes down, so it cannot attribute
    memory to the second of two backends opened in one process; sampling can, at the price
    of missing spikes shorter than the interval.
    """

    METHOD = "RSS of the bench process, sampled every 2 ms from /proc/self/statm"

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.start_rss = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RssSampler:
        self.start_rss = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def delta(self) -> int:
        return self.peak - self.start_rss
