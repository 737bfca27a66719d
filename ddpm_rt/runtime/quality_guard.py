"""The quality guard: does a faster way to run a bundle (a reduced precision, another runtime, an int8
graph) still give the model's samples? Checked once per machine and cached.

A candidate (backend, precision, the graph it runs) samples a short trajectory from fixed noise and
its final sample is compared with the fp32 reference — ONNX Runtime's CPU EP on the fp32 graph, same
plan, same noise (`runtime.agreement`: rel-RMS of the final sample). The verdict is cached as JSON
(`runtime.verdicts`) keyed by both graphs' sha256, backend, precision, the CPU (model and tracked
flags), runtime versions and the trajectory settings.

The trajectory (cheap where it decides the same; `benchmarks/results/guard_agreement.md`): the model's
default sampler with at most GUARD_MAX_STEPS steps, on at least 2 samples and 4096 sample values
(`guard_batch`). The tolerance, rel-RMS <= 0.10 of the final sample, was set between paths whose
quality is unchanged (feature FD / sliced Wasserstein within 1.5% of fp32 at n >= 1000: bf16
0.005-0.008, fp16 0.001, int8 with trajectory calibration 0.02-0.07) and a naive int8 whose FD is 29%
worse (0.13-0.19) (`benchmarks/results/cpu_precision_avx512_bf16.md`). Max-abs is reported, not
bounded by default: single samples of an exact-quality path can flip to a neighbouring mode.

Chaotic models. A network whose trajectory amplifies rounding (random weights, barely trained) makes
two fp32 runtimes disagree by more than the tolerance, and no trajectory comparison can judge a
precision there. When a candidate misses the tolerance, the guard measures the model's own floor —
the reference run again from x_T moved by one ulp — and when that floor is over half the tolerance it
says the model is too chaotic for a trajectory comparison and judges the candidate per call instead:
its outputs at inputs recorded along the reference trajectory, rel-RMS <= `per_call_rel_rms`.

Only numpy, onnxruntime and (through the backend) openvino are imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_rt.errors import ConfigError
from ddpm_rt.fsutil import LogFn
from ddpm_rt.precision import Precision, cpu_capabilities
from ddpm_rt.runtime import verdicts
from ddpm_rt.runtime.agreement import Agreement, agreement
from ddpm_rt.runtime.backend import Backend, BackendOptions
from ddpm_rt.runtime.loop import initial_noise, sample_loop

if TYPE_CHECKING:
    from ddpm_rt.bundle.load import Bundle
    from ddpm_rt.plan import SamplingPlan

GUARD_FORMAT = 2
GUARD_MAX_STEPS = 20  # the guard trajectory: the model's default sampler, at most this many steps
PER_CALL_INPUTS = 6  # chaotic models: calls compared, evenly spaced along the reference trajectory
Opener = Callable[[str, "Bundle", int, BackendOptions], Backend]
ModelFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tolerance:
    """Bounds on the candidate, relative to the fp32 reference."""

    rel_rms: float = 0.10  # of the final sample of the guard trajectory
    max_abs: float | None = None  # reported always; bounded only when set
    chaotic_floor: float = 0.05  # the 1-ulp floor over which a trajectory comparison says nothing
    per_call_rel_rms: float = 0.10  # chaotic models: of each call's output


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
    judged_by: str = "trajectory"  # trajectory | per-call (the model is too chaotic for a trajectory)
    floor_rel_rms: float | None = None  # the reference against itself from x_T + 1 ulp (when measured)
    per_call_rel_rms: float | None = None
    cached: bool = False

    def summary(self) -> str:
        head = f"{self.backend} {self.precision}: "
        if self.judged_by == "per-call":
            return (head + f"model too chaotic for a trajectory comparison (fp32 against itself from x_T + 1 ulp: "
                    f"rel-RMS {self.floor_rel_rms:.3g}), judged per call instead: rel-RMS {self.per_call_rel_rms:.3g} "
                    f"over {PER_CALL_INPUTS} calls on the reference trajectory, tolerance "
                    f"{self.tolerance['per_call_rel_rms']:g}")
        floor = "" if self.floor_rel_rms is None else f"; the model's own 1-ulp floor {self.floor_rel_rms:.3g}"
        return (head + f"final-sample rel-RMS {self.rel_rms:.3g} (max-abs {self.max_abs:.3g}) vs fp32 over a "
                f"{self.steps}-step trajectory, over {self.batch} samples, tolerance rel-RMS "
                f"{self.tolerance['rel_rms']:g}"
                + (f", max-abs {self.tolerance['max_abs']:g}" if self.tolerance.get("max_abs") is not None else "")
                + floor)


def open_candidate(backend: str, bundle: Bundle, batch: int, options: BackendOptions) -> Backend:
    """Open CPU runtime `backend` (ort | openvino) on `bundle`: the only backends the guard checks."""
    if backend == "ort":
        from ddpm_rt.runtime.ort_backend import OrtCpuBackend as cls
    elif backend == "openvino":
        from ddpm_rt.runtime.openvino_backend import OpenVinoBackend as cls
    else:
        raise ConfigError(f"the quality guard checks the CPU runtimes ort and openvino, not {backend!r}")
    return cls.open(bundle, batch, options)


def guard_batch(sample_shape: Sequence[int], values: int = 4096, lo: int = 2, hi: int = 512) -> int:
    """Samples per guard trajectory: at least `lo` samples and `values` sample values, at most `hi`."""
    per_sample = int(np.prod(sample_shape))
    return int(min(hi, max(lo, -(-values // per_sample))))


def guard_plan(bundle: Bundle, steps: int | None) -> SamplingPlan:
    """The model's default sampler, at most GUARD_MAX_STEPS steps (a sampler tied to its training
    steps, like seed 000's direct one, keeps them)."""
    spec = bundle.spec
    default = spec.sampler()
    if steps is None and spec.schedule.family != "interp":
        steps = min(default.steps, GUARD_MAX_STEPS)
    return spec.plan(spec.sampler(steps))


def _reference_model(bundle: Bundle, threads: int | None) -> ModelFn:
    """ORT CPU fp32 on the fp32 graph, plain session.run: the reference every candidate is held to."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or 0)
    so.log_severity_level = 3
    session = ort.InferenceSession(str(bundle.onnx_path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    null = [c.null_values for c in bundle.spec.conditioning]  # conditional models: the unconditional input

    def call(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        feeds = dict(zip(names, (x, t, *(n(x.shape[0]) for n in null)), strict=True))
        return session.run(None, feeds)[0]
    return call


@dataclass
class _Trajectory:
    plan: SamplingPlan
    x_init: np.ndarray
    noise: np.ndarray

    def run(self, model: ModelFn, x_init: np.ndarray | None = None,
            record: list[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
        every = max(1, self.plan.model_calls // PER_CALL_INPUTS)

        def recording(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            if record is not None and len(record) < PER_CALL_INPUTS and calls[0] % every == 0:
                record.append((x.copy(), t.copy()))
            calls[0] += 1
            return model(x, t)

        calls = [0]
        with np.errstate(invalid="ignore", over="ignore"):  # a NaN/inf result is a failed verdict, not a warning
            return sample_loop(recording, self.plan, self.x_init if x_init is None else x_init, noise=self.noise)


def _trajectory(bundle: Bundle, steps: int | None, batch: int, seed: int) -> _Trajectory:
    plan = guard_plan(bundle, steps)
    rng = np.random.default_rng(seed)
    x_init = initial_noise((batch, *bundle.spec.sample_shape), rng)
    noise = rng.standard_normal((plan.steps, batch, *bundle.spec.sample_shape), dtype=np.float32)
    return _Trajectory(plan, x_init, noise)


# the reference run of a (graph, trajectory) is shared by every candidate checked in this process
_REFERENCE: dict[tuple, tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]] = {}
_FLOOR: dict[tuple, Agreement] = {}


def _candidate_model(be: Backend, bundle: Bundle) -> ModelFn:
    null = [c.null_values(be.batch if hasattr(be, "batch") else 1) for c in bundle.spec.conditioning]
    if not null:
        return be
    return lambda x, t: be(x, t, *(n[: x.shape[0]] for n in null))


def guard_fields(bundle: Bundle, backend: str, precision: Precision, candidate: Bundle | None, steps: int | None,
                 batch: int, seed: int, tolerance: Tolerance) -> dict[str, Any]:
    return {"format": GUARD_FORMAT, "bundle_sha256": bundle.onnx_sha256,
            "candidate_sha256": (candidate or bundle).onnx_sha256, "backend": backend,
            "precision": precision.value, "cpu": cpu_capabilities().key(),
            "versions": verdicts.runtime_versions(), "steps": steps, "max_steps": GUARD_MAX_STEPS,
            "batch": batch, "seed": seed, "tolerance": asdict(tolerance)}


def guard(bundle: Bundle, backend_name: str, precision: str | Precision, *, candidate_bundle: Bundle | None = None,
          steps: int | None = None, batch: int | None = None, seed: int = 0, tolerance: Tolerance | None = None,
          threads: int | None = None, cache_dir: str | Path | None = None, opener: Opener = open_candidate,
          log: LogFn | None = None) -> Verdict:
    """Check a candidate (`backend_name` at `precision` on `candidate_bundle`, default the fp32 `bundle`)
    against fp32 ORT on `bundle` over a short trajectory from fixed noise (cached per machine)."""
    tolerance = tolerance or Tolerance()
    batch = batch or guard_batch(bundle.spec.sample_shape)
    prec = Precision.parse(precision)
    fields = guard_fields(bundle, backend_name, prec, candidate_bundle, steps, batch, seed, tolerance)
    key = verdicts.key(fields)
    path = verdicts.cache_dir_for(bundle, cache_dir) / f"guard-{key}.json"
    hit = verdicts.read(path, fields)
    if hit is not None:
        return Verdict(**{**hit["result"], "cached": True})
    traj = _trajectory(bundle, steps, batch, seed)
    if log is not None:
        log(f"quality guard: {backend_name} {prec.value} against fp32 ONNX Runtime, {traj.plan.sampler.sampler} "
            f"{traj.plan.steps} steps on {batch} samples (once on this machine)")
    ref_key = (bundle.onnx_sha256, steps, batch, seed, threads)
    if ref_key not in _REFERENCE:
        inputs: list[tuple[np.ndarray, np.ndarray]] = []
        _REFERENCE[ref_key] = (traj.run(_reference_model(bundle, threads), record=inputs), inputs)
    want, inputs = _REFERENCE[ref_key]
    options = BackendOptions(threads=threads, precision=prec.value, cache_dir=str(cache_dir) if cache_dir else None)
    with opener(backend_name, candidate_bundle or bundle, batch, options) as be:
        model = _candidate_model(be, bundle)
        got = agreement(traj.run(model), want)
        ok = got.rel_rms <= tolerance.rel_rms and (tolerance.max_abs is None or got.max_abs <= tolerance.max_abs)
        verdict = Verdict(ok, got.max_abs, got.rel_rms, asdict(tolerance), backend_name, prec.value,
                          traj.plan.steps, batch, key)
        if not ok and got.finite:  # is it the precision, or the model's own chaos?
            if ref_key not in _FLOOR:
                moved = np.nextafter(traj.x_init, np.float32(np.inf))
                _FLOOR[ref_key] = agreement(traj.run(_reference_model(bundle, threads), x_init=moved), want)
            verdict.floor_rel_rms = _FLOOR[ref_key].rel_rms
            if verdict.floor_rel_rms > tolerance.chaotic_floor:
                reference = _reference_model(bundle, threads)
                per_call = max(agreement(model(x, t), reference(x, t)).rel_rms for x, t in inputs)
                verdict.judged_by, verdict.per_call_rel_rms = "per-call", per_call
                verdict.ok = per_call <= tolerance.per_call_rel_rms
    if log is not None:
        log(f"quality guard: {'passed' if verdict.ok else 'REFUSED'}: {verdict.summary()}")
    result = asdict(verdict)
    result.pop("cached")
    verdicts.write(path, fields, result)
    return verdict


def require_ok(verdict: Verdict, allow_inexact: bool = False) -> None:
    """Refuse (one-line ConfigError with the figures) a variant over tolerance, unless allowed."""
    if verdict.ok or allow_inexact:
        return
    raise ConfigError(f"--precision {verdict.precision} on backend {verdict.backend!r} fails the quality guard: "
                      f"{verdict.summary()}; use --precision fp32, or pass --allow-inexact to run it anyway")


def cached_verdicts(bundle: Bundle, cache_dir: str | Path | None = None) -> list[Verdict]:
    """Every guard verdict cached for `bundle` (any machine, any versions), for `inspect` / `doctor`."""
    import json

    sha = bundle.onnx_sha256
    found = []
    for path in sorted(verdicts.cache_dir_for(bundle, cache_dir).glob("guard-*.json")):
        try:
            data = json.loads(path.read_text())
            if data["fields"]["bundle_sha256"] == sha:
                found.append(Verdict(**{**data["result"], "cached": True}))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found
