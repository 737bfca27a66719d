"""The backend suite: every backend on the same bundle, plan, batch sizes and noise, in one process.

For each batch size all backends are opened and warmed up, then the timed runs are
interleaved (run r of every backend before run r+1 of any, the order rotated each
round) so that a machine whose load drifts penalises every backend alike. Host
backends are driven through the shared loop with a `TimedModel` in front of the
denoiser, which splits each run into time inside the denoiser call and time outside it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_rt.bench.machine import environment
from ddpm_rt.bench.timing import RssSampler, TimedModel, summary
from ddpm_rt.errors import BackendUnavailable, ConfigError
from ddpm_rt.machine import load_average, max_rss_bytes, usable_cores
from ddpm_rt.prepare import choose_backend, open_for
from ddpm_rt.registry import available_backends
from ddpm_rt.runtime.backend import Backend, BackendOptions
from ddpm_rt.runtime.guidance import Guidance, GuidedModel, make_guidance
from ddpm_rt.runtime.loop import initial_noise, sample_loop

if TYPE_CHECKING:
    from ddpm_rt.plan import SamplingPlan
    from ddpm_rt.sources.source import ModelSource

MB = 1024 * 1024
Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to run: backends (baseline first), batch sizes, warm-up and timed runs, threads, seed."""

    backends: tuple[str, ...] | None = None  # None = torch plus every usable backend
    batches: tuple[int, ...] = (1, 4, 16)
    warmup: int = 2
    repeat: int = 5
    threads: int | None = None  # None = every usable core, for every backend alike
    seed: int = 0
    baseline: str = "torch"
    options: dict[str, Any] = field(default_factory=dict)  # BackendOptions.extra for all backends
    floor: bool = True  # also run the baseline from x_T moved by 1 ulp: the trajectory's own sensitivity
    class_label: int | None = None  # conditional models: every sample's class (default: cycle through all)
    guidance: float | None = None  # conditional models: CFG scale (default: the model's own)

    def __post_init__(self) -> None:
        if self.backends is not None and not self.backends:
            raise ConfigError("--backends is empty; name at least one, e.g. torch,ort")
        if not self.batches or min(self.batches) < 1:
            raise ConfigError(f"--batch sizes must all be >= 1, got {list(self.batches)}")
        if self.warmup < 0 or self.repeat < 1:
            raise ConfigError(f"--warmup must be >= 0 and --repeat >= 1, got {self.warmup}, {self.repeat}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")


def default_backends() -> tuple[str, ...]:
    """Eager torch (the baseline) plus every other usable backend."""
    return ("torch", *[n for n in available_backends() if n != "torch"])


def same_weights(source: ModelSource) -> ModelSource:
    """A copy of `source` whose module is loaded once and shared, so every backend (and the
    export behind the ONNX ones) sees the same weights, even for an untrained built-in whose
    loader draws fresh random weights on each call."""
    if source.load_module is None:
        return source
    return replace(source, load_module=functools.cache(source.load_module))


@dataclass
class _Opened:
    name: str
    backend: Backend
    timer: TimedModel | None
    open_s: float
    rss_delta: int
    e2e: list[float] = field(default_factory=list)
    calls: list[np.ndarray] = field(default_factory=list)
    steps: list[np.ndarray] = field(default_factory=list)
    outside: list[float] = field(default_factory=list)
    final: np.ndarray | None = None
    guidance: Guidance | None = None  # a conditional model: the guided call (one 2B call per step)

    def run(self, plan: SamplingPlan, x_init: np.ndarray, noise: np.ndarray | None) -> float:
        """One full loop; returns its end-to-end seconds and records the per-call split."""
        if self.timer is None:  # a device loop: only end to end is observable
            t0 = time.perf_counter()
            self.final = self.backend.sample(plan, x_init, noise=noise, guidance=self.guidance)
            t1 = time.perf_counter()
            self.steps.append(np.full(plan.steps, (t1 - t0) / plan.steps))
            return t1 - t0
        self.timer.reset()
        t0 = time.perf_counter()
        self.final = sample_loop(self.timer, plan, x_init, noise=noise)
        t1 = time.perf_counter()
        calls = self.timer.call_times()
        self.calls.append(calls.copy())
        self.steps.append(self.timer.step_times(t1))
        self.outside.append(float((t1 - t0 - calls.sum()) / (t1 - t0)))
        return t1 - t0


def _open(name: str, source: ModelSource, batch: int, options: BackendOptions, plan: SamplingPlan,
          x_init: np.ndarray, noise: np.ndarray | None, warmup: int, guidance: Guidance | None = None) -> _Opened:
    with RssSampler() as mem:
        t0 = time.perf_counter()
        be = open_for(name, source, batch if guidance is None else guidance.calls_batch(batch), options)
        open_s = time.perf_counter() - t0
        model = be if guidance is None else GuidedModel(be, guidance, batch, tuple(x_init.shape[1:]))
        opened = _Opened(name, be, TimedModel(model, plan.steps) if be.host_loop else None, open_s, 0,
                         guidance=guidance)
        for _ in range(warmup):
            opened.run(plan, x_init, noise)
    opened.rss_delta = mem.delta
    opened.e2e.clear(), opened.calls.clear(), opened.steps.clear(), opened.outside.clear()
    return opened


def _row(o: _Opened, batch: int, plan: SamplingPlan, ref: np.ndarray | None) -> dict[str, Any]:
    e2e = summary(o.e2e)
    steps = np.concatenate(o.steps)
    row: dict[str, Any] = {
        "backend": o.name,
        "batch": batch,
        "open_s": round(o.open_s, 4),
        "e2e_s": e2e,
        "step_ms": summary(steps, 1e3),
        "call_ms": summary(np.concatenate(o.calls), 1e3) if o.calls else None,
        "outside_call_share": summary(o.outside) if o.outside else None,
        "images_per_s": batch / e2e["median"],
        "rss_delta_mb": round(o.rss_delta / MB, 1),
        "finite": bool(np.all(np.isfinite(o.final))),
        "max_abs_diff_vs_baseline": None if ref is None else float(np.max(np.abs(o.final - ref))),
        "info": dict(getattr(o.backend, "info", {}) or {}),
        "steps_timed": "per call" if o.timer is not None else "end to end / steps",
    }
    return row


def _first_calls(opened: list[_Opened], plan: SamplingPlan, x_init: np.ndarray) -> dict[str, np.ndarray]:
    """Each host backend's output for the first step's input: a call-level parity figure that
    separates a wrong graph from fp32 rounding amplified along a trajectory."""
    t = np.full(x_init.shape[0], plan.timesteps[0], dtype=np.float32)
    return {o.name: np.array(o.timer.model(x_init.copy(), t.copy())) for o in opened if o.timer is not None}


def run_suite(source: ModelSource, plan: SamplingPlan, config: BenchConfig,
              log: Log | None = None) -> dict[str, Any]:
    """Time every backend in `config` on `plan`; returns the JSON-able result."""
    log = log or (lambda _msg: None)
    source = same_weights(source)
    names = [choose_backend(n, source).name for n in (config.backends or default_backends())]
    if config.baseline in names:  # the baseline runs first and is what the others are compared to
        names = [config.baseline] + [n for n in names if n != config.baseline]
    names = list(dict.fromkeys(names))
    threads = config.threads or usable_cores()
    options = BackendOptions(threads=threads, extra=dict(config.options))
    env = environment(threads)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for batch in config.batches:
        rng = np.random.default_rng([config.seed, batch])
        shape = (batch, *source.spec.sample_shape)
        x_init = initial_noise(shape, rng)
        noise = rng.standard_normal((plan.steps, *shape), dtype=np.float32) if plan.stochastic else None
        guidance = _guidance(source, config, batch)
        opened: list[_Opened] = []
        try:
            for name in names:
                if name in skipped:
                    continue
                log(f"batch {batch}: opening {name} and warming up ({config.warmup} runs)")
                try:
                    opened.append(_open(name, source, batch, options, plan, x_init, noise, config.warmup,
                                        guidance))
                except BackendUnavailable as e:  # e.g. torch on an ONNX-only bundle: say so, go on
                    skipped[name] = str(e)
                    log(f"skipping {name}: {e}")
            if not opened:
                raise BackendUnavailable(f"no backend could run this model: {'; '.join(skipped.values())}")
            for r in range(config.repeat):
                k = r % len(opened)
                for o in opened[k:] + opened[:k]:  # rotate who goes first each round
                    o.e2e.append(o.run(plan, x_init, noise))
                log(f"batch {batch}: round {r + 1}/{config.repeat} done")
            ref = next((o.final for o in opened if o.name == config.baseline), None)
            first = _first_calls(opened, plan, x_init)
            base_o = next((o for o in opened if o.name == config.baseline), None)
            floor = None
            if config.floor and base_o is not None and ref is not None:
                log(f"batch {batch}: baseline from x_T + 1 ulp (trajectory sensitivity)")
                moved = np.nextafter(x_init, np.float32(np.inf))
                floor = float(np.max(np.abs(
                    base_o.backend.sample(plan, moved, noise=noise, guidance=guidance) - ref)))
            for o in opened:
                rows.append(_row(o, batch, plan, ref))
                rows[-1]["baseline_1ulp_sensitivity"] = floor
                base_out = first.get(config.baseline)
                rows[-1]["max_abs_diff_first_call"] = (
                    None if base_out is None or o.name not in first
                    else float(np.max(np.abs(first[o.name] - base_out))))
        finally:
            for o in opened:
                o.backend.close()
    base = {r["batch"]: r["e2e_s"]["median"] for r in rows if r["backend"] == config.baseline}
    for r in rows:
        r["speedup_vs_baseline"] = base[r["batch"]] / r["e2e_s"]["median"] if r["batch"] in base else None
    env["loadavg_end"] = load_average()
    env["max_rss_mb"] = round(max_rss_bytes() / MB, 1)
    return {
        "suite": "backends",
        "source": source.label,
        "untrained": source.untrained,
        "plan": {
            "sampler": plan.sampler.sampler, "steps": plan.steps, "eta": plan.sampler.eta,
            "spacing": plan.sampler.spacing, "stochastic": plan.stochastic,
            "clip": None if plan.clip is None else list(plan.clip),
        },
        "sample_shape": list(source.spec.sample_shape),
        "guidance": None if not source.spec.conditioning else {
            "scale": config.guidance if config.guidance is not None else source.spec.default_guidance,
            "mode": "batched (one call of 2B per step)",
            "labels": "every sample --class" if config.class_label is not None else "classes in turn"},
        "config": {**asdict(config), "backends": names, "threads": threads},
        "environment": env,
        "memory_method": RssSampler.METHOD + "; rss_delta_mb = peak minus RSS before opening, over "
        "opening + warm-up of that backend (buffers, session, arena); max_rss_mb = getrusage high-water",
        "timing_method": "perf_counter around each full loop (e2e) and around each denoiser call "
        "(TimedModel); step = call start to next call start; outside_call_share = (e2e - sum of calls) / e2e",
        "skipped": skipped,
        "results": rows,
    }


def _guidance(source: ModelSource, config: BenchConfig, batch: int) -> Guidance | None:
    """A conditional model's guidance for one batch: one 2B call per step, as `sample` runs by default."""
    spec = source.spec
    if not spec.conditioning:
        if config.class_label is not None or config.guidance is not None:
            raise ConfigError("this model is unconditional: drop --class/--guidance")
        return None
    cond = spec.conditioning[0]
    if len(spec.conditioning) != 1 or cond.kind != "class":
        raise ConfigError("bench times class-conditional models; use the Python API for other conditioning")
    labels = (np.full(batch, config.class_label, np.int64) if config.class_label is not None
              else np.arange(batch, dtype=np.int64) % cond.num_classes)
    scale = spec.default_guidance if config.guidance is None else config.guidance
    return make_guidance(spec.conditioning, {cond.name: labels}, batch, scale=scale, mode="batched")


def thread_probe(source: ModelSource, plan: SamplingPlan, backends: tuple[str, ...],
                 threads: tuple[int, ...], batch: int = 1, calls: int = 5) -> list[dict[str, Any]]:
    """Per-call latency of each backend at each thread count (denoiser calls only, mid-plan t).

    A quick look at thread scaling and at oversubscription (more threads than free cores),
    where OpenMP-style barriers degrade far more than a loop's worth of steps would show.
    """
    source = same_weights(source)
    x = initial_noise((batch, *source.spec.sample_shape), np.random.default_rng(0))
    t = np.full(batch, plan.timesteps[plan.steps // 2], dtype=np.float32)
    out = []
    for n in threads:
        for name in backends:
            with open_for(name, source, batch, BackendOptions(threads=n)) as be:
                be(x, t)  # warm-up
                ts = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    be(x, t)
                    ts.append(time.perf_counter() - t0)
            out.append({"backend": name, "threads": n, "batch": batch, "call_ms": summary(ts, 1e3),
                        "loadavg": load_average()})
    return out
