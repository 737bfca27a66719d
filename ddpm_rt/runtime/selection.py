"""The quality guard for reduced-precision paths and `auto` by measurement, both cached on disk.

`guard` runs a candidate (backend, precision, the bundle it runs) over a whole trajectory
from fixed noise and compares the final sample with the fp32 reference: ONNX Runtime's CPU EP
on the fp32 graph, same noise, same plan. The verdict (max-abs, rel-RMS, the tolerance, pass or
fail) is cached as JSON in ``selection/`` of the bundle's cache directory, keyed by the fp32
bundle's sha256, the candidate graph's sha256, backend, precision, the CPU (model and tracked
flags), runtime versions and the trajectory settings; any change re-checks.

`rank` times a few calls of each candidate that passes the guard, within a few seconds in all,
and caches the ranking per (bundle, batch, CPU, versions, candidates). It returns the fastest
and a one-line reason for `sample` to print.

Tolerance, by measurement (benchmarks/results/cpu_precision_avx512_bf16.md): the guard's figure is
the final sample's rel-RMS error (RMS of the difference / RMS of the fp32 sample) over the model's
default trajectory, on at least 8 samples and 8192 sample values (digits: 32 samples, swissroll:
512, CIFAR-size: 8). On the shipped models, paths whose quality is unchanged (feature FD / sliced
Wasserstein within 1.5% of fp32 at n >= 1000) measure: bf16 0.005-0.008, fp16 0.001, int8 with
trajectory calibration and float-kept sensitive layers 0.02-0.07; a naive int8 (every conv and
matmul quantized, min-max on one short trajectory), whose FD is 29% worse on digits and whose
sliced Wasserstein moves 29% on swissroll, measures 0.13-0.19. The default bound, rel-RMS <= 0.10,
lies between the two groups. Max-abs is reported, not bounded by default: single samples of an
exact-quality path can flip to a neighbouring mode (max-abs 0.5 at bf16 on 1000 digits).

Only numpy, onnxruntime and (through the backend) openvino are imported here: no torch, nothing
from ``ddpm_rt.exporter``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_rt.errors import ConfigError, first_line
from ddpm_rt.precision import Precision, cpu_capabilities
from ddpm_rt.runtime import ort_cache
from ddpm_rt.runtime.backend import Backend, BackendOptions
from ddpm_rt.runtime.loop import initial_noise, sample_loop

if TYPE_CHECKING:
    from ddpm_rt.bundle.load import Bundle

CACHE_SUBDIR = "selection"
GUARD_FORMAT = 1
RANK_FORMAT = 1


@dataclass(frozen=True)
class Tolerance:
    """Bounds on the final sample of the guard trajectory, relative to the fp32 reference."""

    rel_rms: float = 0.10
    max_abs: float | None = None  # reported always; bounded only when set


@dataclass(frozen=True)
class Candidate:
    """A way to run the model: a backend at a precision, on `bundle` (None: the fp32 bundle itself)."""

    backend: str
    precision: Precision
    bundle: Bundle | None = None

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision.value}"


@dataclass
class Verdict:
    ok: bool
    max_abs: float
    rel_rms: float
    tolerance: dict[str, float | None]
    backend: str
    precision: str
    steps: int
    batch: int
    key: str
    cached: bool = False

    def summary(self) -> str:
        return (f"{self.backend} {self.precision}: final-sample rel-RMS {self.rel_rms:.3g} "
                f"(max-abs {self.max_abs:.3g}) vs fp32 over a {self.steps}-step trajectory, "
                f"over {self.batch} samples, tolerance rel-RMS {self.tolerance['rel_rms']:g}"
                + (f", max-abs {self.tolerance['max_abs']:g}" if self.tolerance.get("max_abs") is not None else ""))


@dataclass
class Ranking:
    backend: str
    precision: str
    reason: str
    timings_ms: dict[str, float]
    refused: dict[str, str] = field(default_factory=dict)
    key: str = ""
    cached: bool = False


Opener = Callable[[str, "Bundle", int, BackendOptions], Backend]


def open_candidate(backend: str, bundle: Bundle, batch: int, options: BackendOptions) -> Backend:
    """Open CPU runtime `backend` (ort | openvino) on `bundle`: the only backends the guard ranks."""
    if backend == "ort":
        from ddpm_rt.runtime.ort_backend import OrtCpuBackend as cls
    elif backend == "openvino":
        from ddpm_rt.runtime.openvino_backend import OpenVinoBackend as cls
    else:
        raise ConfigError(f"the quality guard ranks the CPU runtimes ort and openvino, not {backend!r}")
    return cls.open(bundle, batch, options)


# -- cache -----------------------------------------------------------------------------------

def cache_dir_for(bundle: Bundle, override: str | Path | None = None) -> Path:
    if override is not None:
        return Path(override) / CACHE_SUBDIR
    return ort_cache.cache_dir_for(Path(bundle.onnx_path), override, subdir=CACHE_SUBDIR)


def runtime_versions() -> dict[str, str | None]:
    import onnxruntime

    import ddpm_rt

    try:
        import openvino

        ov_version: str | None = openvino.__version__
    except ImportError:
        ov_version = None
    return {"ddpm_rt": getattr(ddpm_rt, "__version__", "unknown"), "onnxruntime": onnxruntime.__version__,
            "openvino": ov_version, "numpy": np.__version__}


def _key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]


def bundle_sha256(bundle: Bundle) -> str:
    return bundle.onnx_sha256


def _read(path: Path, fields: dict[str, Any]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("fields") == json.loads(json.dumps(fields, default=str)) else None


def _write(path: Path, fields: dict[str, Any], result: dict[str, Any]) -> None:
    from ddpm_rt.fsutil import atomic_write_text

    with contextlib.suppress(OSError, ConfigError):  # an unwritable cache only costs a re-check
        atomic_write_text(path, json.dumps({"fields": fields, "result": result}, indent=2, default=str) + "\n")


# -- the guard -------------------------------------------------------------------------------

def _reference(bundle: Bundle, threads: int | None) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """ORT CPU fp32 on the fp32 graph, plain session.run: the reference every candidate is held to."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or 0)
    so.log_severity_level = 3
    session = ort.InferenceSession(str(bundle.onnx_path), so, providers=["CPUExecutionProvider"])
    return lambda x, t: session.run(["out"], {"x": x, "t": t})[0]


def trajectory(model: Callable[[np.ndarray, np.ndarray], np.ndarray], bundle: Bundle, steps: int | None,
               batch: int, seed: int) -> tuple[np.ndarray, int]:
    """(final sample, steps) of the model's default sampler from fixed noise (per-step noise fixed too)."""
    spec = bundle.spec
    plan = spec.plan(spec.sampler(steps))
    rng = np.random.default_rng(seed)
    x_init = initial_noise((batch, *spec.sample_shape), rng)
    noise = rng.standard_normal((plan.steps, batch, *spec.sample_shape), dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # a NaN/inf result is a failed verdict, not a warning
        return sample_loop(model, plan, x_init, noise=noise), plan.steps


def guard_batch(sample_shape: Sequence[int], values: int = 8192, lo: int = 8, hi: int = 512) -> int:
    """Samples per guard trajectory: at least `lo` samples and `values` sample values, at most `hi`."""
    per_sample = int(np.prod(sample_shape))
    return int(min(hi, max(lo, -(-values // per_sample))))


def guard_fields(bundle: Bundle, candidate: Candidate, steps: int | None, batch: int, seed: int,
                 tolerance: Tolerance) -> dict[str, Any]:
    run_on = candidate.bundle or bundle
    return {"format": GUARD_FORMAT, "bundle_sha256": bundle_sha256(bundle),
            "candidate_sha256": bundle_sha256(run_on), "backend": candidate.backend,
            "precision": candidate.precision.value, "cpu": cpu_capabilities().key(),
            "versions": runtime_versions(), "steps": steps, "batch": batch, "seed": seed,
            "tolerance": asdict(tolerance)}


def guard(bundle: Bundle, backend_name: str, precision: str | Precision, *, candidate_bundle: Bundle | None = None,
          steps: int | None = None, batch: int | None = None, seed: int = 0, tolerance: Tolerance | None = None,
          threads: int | None = None, cache_dir: str | Path | None = None,
          opener: Opener = open_candidate) -> Verdict:
    """Check a candidate against fp32 over a whole trajectory from fixed noise (cached per machine)."""
    tolerance = tolerance or Tolerance()
    batch = batch or guard_batch(bundle.spec.sample_shape)
    candidate = Candidate(backend_name, Precision.parse(precision), candidate_bundle)
    fields = guard_fields(bundle, candidate, steps, batch, seed, tolerance)
    key = _key(fields)
    path = cache_dir_for(bundle, cache_dir) / f"guard-{key}.json"
    hit = _read(path, fields)
    if hit is not None:
        return Verdict(**{**hit["result"], "cached": True})
    want, n = trajectory(_reference(bundle, threads), bundle, steps, batch, seed)
    options = BackendOptions(threads=threads, precision=candidate.precision.value,
                             cache_dir=str(cache_dir) if cache_dir else None)
    with opener(backend_name, candidate.bundle or bundle, batch, options) as be:
        got, _ = trajectory(be, bundle, steps, batch, seed)
    diff = got.astype(np.float64) - want
    max_abs = float(np.max(np.abs(diff))) if np.all(np.isfinite(got)) else float("inf")
    rel_rms = float(np.sqrt(np.mean(diff ** 2) / max(np.mean(want.astype(np.float64) ** 2), 1e-12)))
    if not np.isfinite(max_abs):
        rel_rms = float("inf")
    ok = rel_rms <= tolerance.rel_rms and (tolerance.max_abs is None or max_abs <= tolerance.max_abs)
    verdict = Verdict(ok, max_abs, rel_rms, asdict(tolerance), backend_name, candidate.precision.value, n,
                      batch, key)
    result = asdict(verdict)
    result.pop("cached")
    _write(path, fields, result)
    return verdict


def require_ok(verdict: Verdict, allow_inexact: bool = False) -> None:
    """Refuse (one-line ConfigError with the figures) a variant over tolerance, unless allowed."""
    if verdict.ok or allow_inexact:
        return
    raise ConfigError(f"--precision {verdict.precision} on backend {verdict.backend!r} fails the quality guard: "
                      f"{verdict.summary()}; use --precision fp32, or pass --allow-inexact to run it anyway")


def cached_verdicts(bundle: Bundle, cache_dir: str | Path | None = None) -> list[Verdict]:
    """Every guard verdict cached for `bundle` (any machine, any versions), for `inspect` / `doctor`."""
    sha = bundle_sha256(bundle)
    found = []
    for path in sorted(cache_dir_for(bundle, cache_dir).glob("guard-*.json")):
        try:
            data = json.loads(path.read_text())
            if data["fields"]["bundle_sha256"] == sha:
                found.append(Verdict(**{**data["result"], "cached": True}))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


# -- ranking ---------------------------------------------------------------------------------

def default_candidates(int8_bundle: Bundle | None = None) -> list[Candidate]:
    """What `auto` may try on this CPU: ORT fp32, and OpenVINO (if installed) at every precision this
    CPU runs natively; int8 on both when an int8 variant of the bundle is given."""
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
    be(x, t)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        be(x, t)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def rank(bundle: Bundle, batch: int, candidates: Sequence[Candidate], budget_s: float = 4.0, *,
         threads: int | None = None, cache_dir: str | Path | None = None, guard_steps: int | None = None,
         tolerance: Tolerance | None = None, opener: Opener = open_candidate,
         timer: Callable[..., float] = time_calls) -> Ranking:
    """The fastest guard-passing candidate at `batch` on this machine (measured once, then cached)."""
    if not candidates:
        raise ConfigError("no candidates to rank")
    tolerance = tolerance or Tolerance()
    labels = [c.label for c in candidates]
    fields = {"format": RANK_FORMAT, "bundle_sha256": bundle_sha256(bundle), "batch": batch,
              "threads": threads, "cpu": cpu_capabilities().key(), "versions": runtime_versions(),
              "candidates": [[c.label, bundle_sha256(c.bundle or bundle)] for c in candidates],
              "guard_steps": guard_steps, "tolerance": asdict(tolerance)}
    key = _key(fields)
    path = cache_dir_for(bundle, cache_dir) / f"rank-{key}.json"
    hit = _read(path, fields)
    if hit is not None:
        return Ranking(**{**hit["result"], "cached": True})
    timings, refused = {}, {}
    per_candidate = budget_s / len(candidates)
    for c in candidates:
        if not (c.backend == "ort" and c.precision is Precision.FP32 and c.bundle is None):  # the reference
            try:
                verdict = guard(bundle, c.backend, c.precision, candidate_bundle=c.bundle, steps=guard_steps,
                                tolerance=tolerance, threads=threads, cache_dir=cache_dir, opener=opener)
            except Exception as e:  # noqa: BLE001 - an unusable candidate is refused, not fatal
                refused[c.label] = f"{type(e).__name__}: {first_line(e)}"
                continue
            if not verdict.ok:
                refused[c.label] = f"fails the quality guard ({verdict.summary()})"
                continue
        options = BackendOptions(threads=threads, precision=c.precision.value,
                                 cache_dir=str(cache_dir) if cache_dir else None)
        try:
            with opener(c.backend, c.bundle or bundle, batch, options) as be:
                timings[c.label] = timer(be, bundle, batch, per_candidate)
        except Exception as e:  # noqa: BLE001
            refused[c.label] = f"{type(e).__name__}: {first_line(e)}"
    if not timings:
        raise ConfigError(f"no candidate of {', '.join(labels)} is usable: "
                          + "; ".join(f"{k}: {v}" for k, v in refused.items()))
    order = sorted(timings, key=timings.__getitem__)
    best = order[0]
    backend, precision = best.split(" ")
    others = ", ".join(f"{k} {timings[k]:.1f} ms" for k in order[1:])
    reason = (f"{best}: {timings[best]:.1f} ms/call at batch {batch}, fastest of {len(timings)} guarded "
              f"candidate(s) measured on this CPU" + (f" ({others})" if others else "")
              + (f"; refused {', '.join(refused)}" if refused else ""))
    ranking = Ranking(backend, precision, reason, timings, refused, key)
    result = asdict(ranking)
    result.pop("cached")
    _write(path, fields, result)
    return ranking
