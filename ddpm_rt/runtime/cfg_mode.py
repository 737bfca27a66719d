"""How the two halves of classifier-free guidance run fastest on this machine: one call of 2B or
two calls of B — measured once per (bundle, backend, precision, batch, CPU, versions), then cached
beside the backend ranking (`runtime.verdicts`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_rt.precision import cpu_capabilities
from ddpm_rt.runtime import verdicts
from ddpm_rt.runtime.backend import Backend, BackendOptions

if TYPE_CHECKING:
    from ddpm_rt.bundle.load import Bundle

CFG_FORMAT = 1
Opener = Callable[[int], Backend]  # batch -> an open backend


def _inputs(bundle: Bundle, batch: int) -> tuple[np.ndarray, ...]:
    spec = bundle.spec
    x = np.random.default_rng(0).standard_normal((batch, *spec.sample_shape), dtype=np.float32)
    t = np.full((batch,), 500.0, np.float32)
    return (x, t, *(c.null_values(batch) for c in spec.conditioning))


def time_guided_step(be: Backend, inputs: tuple[np.ndarray, ...], calls: int, budget_s: float,
                     repeats: int = 7) -> float:
    """Median ms of `calls` backend calls (one guided step), after one warm-up step."""
    for _ in range(calls):
        be(*inputs)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 2 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        for _ in range(calls):
            be(*inputs)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def measure(bundle: Bundle, batch: int, opener: Opener, budget_s: float = 1.0) -> dict[str, float]:
    """ms per guided step: {"batched": one call of 2B, "split": two calls of B}."""
    out = {}
    for mode, size, calls in (("batched", 2 * batch, 1), ("split", batch, 2)):
        with opener(size) as be:
            out[mode] = time_guided_step(be, _inputs(bundle, size), calls, budget_s / 2)
    return out


def choose_mode(bundle: Bundle, backend: str, options: BackendOptions, batch: int, opener: Opener, *,
                cache_dir: str | Path | None = None, log: Callable[[str], None] | None = None) -> tuple[str, dict[str, Any]]:
    """(the faster mode, its record) for guided sampling of `bundle` on `backend` at `batch` (cached)."""
    fields = {"format": CFG_FORMAT, "bundle_sha256": bundle.onnx_sha256, "backend": backend,
              "precision": options.precision, "threads": options.threads, "batch": batch,
              "cpu": cpu_capabilities().key(), "versions": verdicts.runtime_versions()}
    path = verdicts.cache_dir_for(bundle, cache_dir) / f"cfg-{verdicts.key(fields)}.json"
    hit = verdicts.read(path, fields)
    if hit is not None:
        return hit["result"]["mode"], {**hit["result"], "cached": True}
    if log is not None:
        log(f"guidance: timing one call of {2 * batch} against two calls of {batch} on {backend} (cached after this run)")
    timings = measure(bundle, batch, opener)
    mode = min(timings, key=timings.__getitem__)
    result = {"mode": mode, "ms_per_step": timings}
    verdicts.write(path, fields, result)
    return mode, {**result, "cached": False}
