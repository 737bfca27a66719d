"""`auto` on the CPU by measurement: the fastest way to run a bundle here that keeps its samples.

Every candidate (ORT fp32; OpenVINO at each precision this CPU runs natively; int8 on an int8
bundle's own graph) is opened at the run's batch and timed for a few calls (a shared budget of a
couple of seconds). Then, fastest first, each is put to the quality guard (`runtime.quality_guard`)
until one passes: ORT fp32 on the fp32 graph is the reference and needs none, and the candidates
slower than the one that passed are never guarded (they cannot win). The ranking is cached per
(bundle, batch, threads, CPU, versions, candidates) (`runtime.verdicts`); `sample` prints its reason.
"""

from __future__ import annotations

import importlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ddpm_rt.errors import ConfigError, first_line
from ddpm_rt.fsutil import LogFn
from ddpm_rt.precision import Precision, cpu_capabilities
from ddpm_rt.runtime import verdicts
from ddpm_rt.runtime.backend import Backend, BackendOptions
from ddpm_rt.runtime.loop import initial_noise
from ddpm_rt.runtime.quality_guard import Opener, Tolerance, guard, open_candidate

if TYPE_CHECKING:
    from ddpm_rt.bundle.load import Bundle

RANK_FORMAT = 3


@dataclass(frozen=True)
class Candidate:
    """A way to run the model: a backend at a precision, on `bundle` (None: the fp32 bundle itself)."""

    backend: str
    precision: Precision
    bundle: Bundle | None = None

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision.value}"

    @property
    def reference(self) -> bool:
        """ORT fp32 on the fp32 graph: what every other candidate is guarded against."""
        return self.backend == "ort" and self.precision is Precision.FP32 and self.bundle is None


@dataclass
class Ranking:
    backend: str
    precision: str
    reason: str
    timings_ms: dict[str, float]
    refused: dict[str, str] = field(default_factory=dict)
    key: str = ""
    cached: bool = False
    # what opening costs once a run starts: a warm open (caches built) plus importing the runtime
    open_ms: dict[str, float] = field(default_factory=dict)

    def for_calls(self, calls: int | None) -> tuple[str, str, str]:
        """(backend, precision, why) for a run of `calls` denoiser calls at this batch: the fastest per
        call, unless opening it costs more than it saves — then the fp32 ORT reference (always safe)."""
        best = f"{self.backend} {self.precision}"
        ref = "ort fp32"
        if calls is None or best == ref or ref not in self.timings_ms or best not in self.open_ms:
            return self.backend, self.precision, ""
        total = {k: self.open_ms.get(k, 0.0) + calls * self.timings_ms[k] for k in (best, ref)}
        if total[ref] < total[best]:
            return "ort", "fp32", (f"; for {calls} call(s) ort fp32 is quicker end to end ({total[ref]:.0f} ms "
                                   f"against {total[best]:.0f} ms for {best}, whose opening costs "
                                   f"{self.open_ms[best]:.0f} ms)")
        return self.backend, self.precision, ""


def default_candidates(int8_bundle: Bundle | None = None) -> list[Candidate]:
    """What `auto` may try on this CPU: ORT fp32, and OpenVINO (if installed) at every precision this
    CPU runs natively; int8 on both when an int8 graph of the bundle is given."""
    from ddpm_rt.runtime.openvino_backend import OpenVinoBackend

    cpu = cpu_capabilities()
    out = [Candidate("ort", Precision.FP32)]
    has_ov = OpenVinoBackend.unavailable_reason() is None
    if has_ov:
        out += [Candidate("openvino", p) for p in (Precision.FP32, Precision.BF16, Precision.FP16) if cpu.supports(p)]
    if int8_bundle is not None and cpu.supports(Precision.INT8):
        out.append(Candidate("ort", Precision.INT8, int8_bundle))
        if has_ov:
            out.append(Candidate("openvino", Precision.INT8, int8_bundle))
    return out


def time_calls(be: Backend, bundle: Bundle, batch: int, budget_s: float, min_calls: int = 2,
               max_calls: int = 10) -> float:
    """Median ms per call after one warm-up, stopping at `max_calls` or once `budget_s` is spent."""
    x = initial_noise((batch, *bundle.spec.sample_shape), np.random.default_rng(0))
    t = np.full((batch,), 500.0, np.float32)
    cond = [c.null_values(batch) for c in bundle.spec.conditioning]
    be(x, t, *cond)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        be(x, t, *cond)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


_RUNTIME_MODULES = {"openvino": "openvino", "ort": "onnxruntime"}


def _import_ms(backend: str) -> float:
    """Import `backend`'s runtime now (ms): a run that opens it pays this once per process."""
    module = _RUNTIME_MODULES.get(backend)
    if module is None or module in sys.modules:
        return 0.0
    t0 = time.perf_counter()
    importlib.import_module(module)
    return 1e3 * (time.perf_counter() - t0)


def rank(bundle: Bundle, batch: int, candidates: Sequence[Candidate], budget_s: float = 2.0, *,
         threads: int | None = None, cache_dir: str | Path | None = None, guard_steps: int | None = None,
         tolerance: Tolerance | None = None, opener: Opener = open_candidate,
         timer: Callable[..., float] = time_calls, log: LogFn | None = None) -> Ranking:
    """The fastest candidate at `batch` that passes the quality guard (measured once, then cached)."""
    if not candidates:
        raise ConfigError("no candidates to rank")
    tolerance = tolerance or Tolerance()
    fields = {"format": RANK_FORMAT, "bundle_sha256": bundle.onnx_sha256, "batch": batch,
              "threads": threads, "cpu": cpu_capabilities().key(), "versions": verdicts.runtime_versions(),
              "candidates": [[c.label, (c.bundle or bundle).onnx_sha256] for c in candidates],
              "guard_steps": guard_steps, "tolerance": asdict(tolerance)}
    key = verdicts.key(fields)
    path = verdicts.cache_dir_for(bundle, cache_dir) / f"rank-{key}.json"
    hit = verdicts.read(path, fields)
    if hit is not None:
        return Ranking(**{**hit["result"], "cached": True})
    timings: dict[str, float] = {}
    open_ms: dict[str, float] = {}
    refused: dict[str, str] = {}
    per_candidate = budget_s / len(candidates)
    for k, c in enumerate(candidates, start=1):
        if log is not None:
            log(f"auto: timing {c.label} at batch {batch} ({k}/{len(candidates)})")
        options = BackendOptions(threads=threads, precision=c.precision.value,
                                 cache_dir=str(cache_dir) if cache_dir else None)
        try:
            runtime_import_ms = _import_ms(c.backend)
            with opener(c.backend, c.bundle or bundle, batch, options) as be:
                timings[c.label] = timer(be, bundle, batch, per_candidate)
            t0 = time.perf_counter()  # again, now that its caches are built: what a later run pays
            with opener(c.backend, c.bundle or bundle, batch, options):
                open_ms[c.label] = 1e3 * (time.perf_counter() - t0) + runtime_import_ms
        except Exception as e:  # noqa: BLE001 - an unusable candidate is refused, not fatal
            refused[c.label] = f"{type(e).__name__}: {first_line(e)}"
    chosen, guarded = None, ""
    by_label = {c.label: c for c in candidates}
    for label in sorted(timings, key=timings.__getitem__):  # fastest first; stop at the first that passes
        c = by_label[label]
        if c.reference:
            chosen = c
            break
        try:
            verdict = guard(bundle, c.backend, c.precision, candidate_bundle=c.bundle, steps=guard_steps,
                            tolerance=tolerance, threads=threads, cache_dir=cache_dir, opener=opener, log=log)
        except Exception as e:  # noqa: BLE001
            refused[label] = f"{type(e).__name__}: {first_line(e)}"
            continue
        if verdict.ok:
            chosen, guarded = c, verdict.summary()
            break
        refused[label] = f"fails the quality guard ({verdict.summary()})"
    if chosen is None:
        raise ConfigError("no candidate is usable here: " + "; ".join(f"{k}: {v}" for k, v in refused.items()))
    best = chosen.label
    others = ", ".join(f"{k} {timings[k]:.1f} ms" for k in sorted(timings, key=timings.__getitem__) if k != best)
    reason = (f"{best}: {timings[best]:.1f} ms/call at batch {batch}, the fastest of {len(timings)} candidate(s) "
              f"timed on this CPU that keeps the model's samples" + (f" ({others})" if others else "")
              + (f"; quality guard: {guarded}" if guarded else "; the fp32 reference itself")
              + (f"; refused {', '.join(refused)}" if refused else ""))
    ranking = Ranking(chosen.backend, chosen.precision.value, reason, timings, refused, key, open_ms=open_ms)
    result = asdict(ranking)
    result.pop("cached")
    verdicts.write(path, fields, result)
    return ranking
