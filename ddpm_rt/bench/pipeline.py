"""diffusers' own `DDIMPipeline` in eager mode against our loop, on the same `UNet2DModel` weights.

Same initial noise (the pipeline's `randn_tensor` with a seeded CPU generator is
``torch.randn(shape, generator=g)``, which we draw too), same DDIM schedule (a
`DDIMScheduler` configured from the model's DiffusionSpec and our SamplerSpec), same
steps and batch, runs interleaved in one process. The final images are compared in the
pipeline's output space, ``clamp(x / 2 + 0.5, 0, 1)``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_rt.bench.suites import BenchConfig, Log, TimedModel, same_weights
from ddpm_rt.bench.timing import summary
from ddpm_rt.errors import BackendUnavailable, ConfigError
from ddpm_rt.prepare import open_for
from ddpm_rt.registry import check_backend
from ddpm_rt.runtime.backend import BackendOptions
from ddpm_rt.runtime.loop import sample_loop

if TYPE_CHECKING:
    import torch

    from ddpm_rt.plan import SamplingPlan
    from ddpm_rt.sources.source import ModelSource
    from ddpm_rt.spec import DiffusionSpec

BETA_SCHEDULE = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def find_unet(module: torch.nn.Module) -> Any:
    """The diffusers UNet2DModel inside `module` (itself, or wrapped by an adapter)."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise BackendUnavailable("the DDIMPipeline suite needs diffusers: pip install 'ddpm-rt[diffusers]'") from None
    for m in module.modules():
        if isinstance(m, UNet2DModel):
            return m
    raise ConfigError("--diffusers-pipeline needs a model built on diffusers' UNet2DModel "
                      "(a diffusers folder or a bundle exported from one)")


def ddim_scheduler(spec: DiffusionSpec, plan: SamplingPlan) -> Any:
    """A DDIMScheduler that takes the same steps as `plan` on the model's training schedule."""
    from diffusers import DDIMScheduler

    s, sampler = spec.schedule, plan.sampler
    if s.kind not in BETA_SCHEDULE:
        raise ConfigError(f"DDIMScheduler has no {s.kind!r} schedule; the pipeline suite needs "
                          f"one of {', '.join(BETA_SCHEDULE)}")
    if spec.prediction_type not in ("epsilon", "sample", "v_prediction"):
        raise ConfigError(f"DDIMScheduler cannot use prediction type {spec.prediction_type!r}")
    clip = spec.clip
    if clip is not None and clip[0] != -clip[1]:
        raise ConfigError(f"DDIMScheduler clips symmetrically; this model clips to {clip}")
    return DDIMScheduler(
        num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start, beta_end=s.beta_end,
        beta_schedule=BETA_SCHEDULE[s.kind], clip_sample=clip is not None,
        clip_sample_range=1.0 if clip is None else float(clip[1]),
        set_alpha_to_one=sampler.set_alpha_to_one, steps_offset=sampler.steps_offset,
        prediction_type=spec.prediction_type, timestep_spacing=sampler.spacing,
    )


def run_pipeline_suite(source: ModelSource, plan: SamplingPlan, config: BenchConfig,
                       backends: tuple[str, ...] = ("torch", "ort"), batch: int = 1,
                       log: Log | None = None) -> dict[str, Any]:
    """DDIMPipeline eager vs our loop on `backends`, interleaved; returns the JSON-able result."""
    import torch

    log = log or (lambda _msg: None)
    source = same_weights(source)
    if plan.sampler.sampler != "ddim":
        raise ConfigError(f"the DDIMPipeline suite runs DDIM; this plan uses {plan.sampler.sampler!r} "
                          "(pass --sampler ddim)")
    if source.load_module is None:
        raise BackendUnavailable(f"{source.label} has no PyTorch module to run the pipeline on")
    from diffusers import DDIMPipeline

    threads = config.threads
    if threads:
        torch.set_num_threads(threads)
    unet = find_unet(source.load_module()).eval()
    pipe = DDIMPipeline(unet=unet, scheduler=ddim_scheduler(source.spec, plan))
    pipe.set_progress_bar_config(disable=True)
    if not np.array_equal(_timesteps(pipe, plan.steps), plan.timesteps.astype(np.int64)):
        raise ConfigError("DDIMScheduler's timesteps differ from the plan's; check spacing/steps_offset")
    shape = (batch, *source.spec.sample_shape)
    x_init = torch.randn(shape, generator=torch.Generator().manual_seed(config.seed)).numpy()

    def run_pipe() -> tuple[float, np.ndarray]:
        g = torch.Generator().manual_seed(config.seed)
        t0 = time.perf_counter()
        img = pipe(batch_size=batch, generator=g, eta=plan.sampler.eta,
                   num_inference_steps=plan.steps, output_type="pt").images
        return time.perf_counter() - t0, img.numpy()

    options = BackendOptions(threads=threads, extra=dict(config.options))
    ours = {}
    for name in backends:
        be = open_for(check_backend(name), source, batch, options)
        ours[name] = (be, TimedModel(be, plan.steps))
    times: dict[str, list[float]] = {"diffusers-ddim-pipeline": [], **{n: [] for n in ours}}
    outside: dict[str, list[float]] = {n: [] for n in ours}
    finals: dict[str, np.ndarray] = {}
    try:
        for r in range(config.warmup + config.repeat):
            timed = r >= config.warmup
            dt, finals["diffusers-ddim-pipeline"] = run_pipe()
            if timed:
                times["diffusers-ddim-pipeline"].append(dt)
            for name, (_be, timer) in ours.items():
                timer.reset()
                t0 = time.perf_counter()
                x = sample_loop(timer, plan, x_init)
                dt = time.perf_counter() - t0
                finals[name] = np.clip(x / 2 + 0.5, 0.0, 1.0)
                if timed:
                    times[name].append(dt)
                    outside[name].append(float((dt - timer.call_times().sum()) / dt))
            log(f"pipeline suite: round {r + 1}/{config.warmup + config.repeat}"
                f"{'' if timed else ' (warm-up)'}")
    finally:
        for be, _ in ours.values():
            be.close()
    ref = finals["diffusers-ddim-pipeline"]
    pipe_median = float(np.median(times["diffusers-ddim-pipeline"]))
    rows = []
    for name, ts in times.items():
        med = float(np.median(ts))
        rows.append({
            "runner": name,
            "e2e_s": summary(ts),
            "images_per_s": batch / med,
            "speedup_vs_pipeline": pipe_median / med,
            "outside_call_share": summary(outside[name]) if name in outside else None,
            "max_abs_diff_vs_pipeline": float(np.max(np.abs(finals[name] - ref))),
        })
    return {
        "suite": "diffusers-ddim-pipeline",
        "batch": batch,
        "steps": plan.steps,
        "eta": plan.sampler.eta,
        "threads": threads,
        "note": "DDIMPipeline.__call__ (eager, torch.no_grad) vs our loop from the same initial noise; "
        "differences in the pipeline's output space clamp(x/2+0.5, 0, 1)",
        "results": rows,
    }


def _timesteps(pipe: Any, steps: int) -> np.ndarray:
    pipe.scheduler.set_timesteps(steps)
    return pipe.scheduler.timesteps.numpy().astype(np.int64)
