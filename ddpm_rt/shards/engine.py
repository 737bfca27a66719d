"""The one place that turns a bundle directory into an open backend, and runs shards on it.

`prepare_job` (source -> bundle + plan, through `ddpm_rt.prepare`) and
`open_shard_backend` (a `Bundle` opened on the registry; workers need no torch) are this
package's only calls into the source / backend API.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_rt.plan import SamplerSpec, SamplingPlan
from ddpm_rt.runtime.backend import Backend
from ddpm_rt.shards.edit_inputs import EditInput
from ddpm_rt.shards.job import ShardJob
from ddpm_rt.shards.layout import ShardRange
from ddpm_rt.shards.noise import BatchNoise


def open_shard_backend(job: ShardJob, bundle_dir: Path | None = None) -> Backend:
    """Open `job.backend` on the bundle at `bundle_dir` (default: the job's) for one micro-batch."""
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.registry import open_backend
    from ddpm_rt.runtime.backend import BackendOptions

    bundle = load_bundle(Path(bundle_dir or job.bundle_dir))
    options = BackendOptions(threads=job.threads, precision=job.precision)
    batch = job.layout.micro_batch * (2 if job.cond is not None and job.guidance_scale not in (0.0, 1.0) else 1)
    return open_backend(job.backend, bundle, batch=batch, options=options)


class ShardSampler:
    """One open backend that computes shards of a job, micro-batch by micro-batch."""

    def __init__(self, job: ShardJob, bundle_dir: Path | None = None) -> None:
        self.job = job
        self.backend = open_shard_backend(job, bundle_dir)
        self.conditioning = job.plan_conditioning if job.cond is not None else ()
        self.sample_shape = job.sample_shape
        self.meta: dict[str, Any] = {
            "backend": self.backend.name,
            "precision": job.precision,
            "threads": job.threads,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        }

    def _micro_batch(self, plan: SamplingPlan, first: int) -> np.ndarray:
        job, m = self.job, self.job.layout.micro_batch
        noise = BatchNoise(job.seed, range(first, first + m), self.sample_shape)
        x_init = noise.initial()
        guidance = None
        if job.cond is not None:  # one CFG call of 2m: the mode is part of the run's identity
            from ddpm_rt.runtime.guidance import make_guidance

            guidance = make_guidance(self.conditioning, job.cond_rows(first, m), m, scale=job.guidance_scale,
                                     rescale=job.guidance_rescale, mode="batched")
        # an edit: x_init is the z of the noised image (from each sample's own stream, as x_T is)
        edit = job.edit_rows(first, m)
        if self.backend.device == "cpu":  # host loop: per-step draws in place, row b from stream b
            return self.backend.sample(plan, x_init, rng=noise, guidance=guidance, edit=edit,  # type: ignore[arg-type]
                                       allow_nonfinite=job.allow_nonfinite)
        masked = edit is not None and edit.mask is not None
        return self.backend.sample(plan, x_init, noise=noise.step_noise(plan, masked), guidance=guidance,
                                   edit=edit, allow_nonfinite=job.allow_nonfinite)

    def compute(self, shard: ShardRange) -> tuple[np.ndarray, dict[str, Any]]:
        """Samples [shard.start, shard.stop) as float32 [n, ...], and how they were made."""
        m = self.job.layout.micro_batch
        assert shard.start % m == 0, "shards start on a micro-batch boundary"
        t0, c0 = time.perf_counter(), time.process_time()
        out = np.empty((shard.size, *self.sample_shape), dtype=np.float32)
        for first in range(shard.start, shard.stop, m):
            n = min(m, shard.stop - first)
            out[first - shard.start : first - shard.start + n] = self._micro_batch(self.job.plan, first)[:n]
        return out, {**self.meta, "seconds": round(time.perf_counter() - t0, 4),
                      "cpu_seconds": round(time.process_time() - c0, 4)}

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> ShardSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prepare_job(
    source: str | None,
    *,
    num: int,
    shard_size: int,
    micro_batch: int | None = None,
    seed: int = 0,
    steps: int | None = None,
    backend: str = "ort",
    threads: int | None = 1,
    precision: str | None = None,
    allow_inexact: bool = False,
    allow_nonfinite: bool = False,
    cond: dict[str, Any] | None = None,
    guidance_scale: float | None = None,
    guidance_rescale: float = 0.0,
    init: EditInput | None = None,
    mask: EditInput | None = None,
    mask_means: str = "keep",
    strength: float | None = None,
    log: Any = None,
    **sampler_overrides: Any,
) -> ShardJob:
    """A job for `source` (built-in name, checkpoint, bundle): its bundle (exported once) and plan.

    The backend (and precision) is chosen at the micro-batch the workers run, as `sample` does;
    `micro_batch` defaults to 16, or the shard size when that is smaller. `cond` holds the
    conditioning of all `num` samples (conditional models). Editing: `init` (and `mask`) is one
    image for all samples or one per sample (`ddpm_rt.shards.edit_inputs`), `strength` cuts the
    plan as `sample --strength` does, and `repaint=(jump, resample)` goes with the sampler settings.
    """
    from dataclasses import replace

    from ddpm_rt.conditioning import check_conditioning
    from ddpm_rt.editing import start_for_strength
    from ddpm_rt.errors import ConfigError
    from ddpm_rt.prepare import bundle_for, choose_backend
    from ddpm_rt.registry import REGISTRY
    from ddpm_rt.shards.edit_inputs import shard_edit
    from ddpm_rt.shards.layout import ShardLayout
    from ddpm_rt.sources import resolve_source
    from ddpm_rt.spec import DiffusionSpec

    threads = 1 if threads is None else threads
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1 for sharded runs (it is recorded per shard), got {threads}")
    layout = ShardLayout(num, shard_size, micro_batch or min(DEFAULT_MICRO_BATCH, shard_size))
    if init is None and (mask is not None or strength is not None):
        raise ConfigError(f"{'--mask' if mask is not None else '--strength'} needs --init: the image(s) "
                          "each sample starts from")
    src = resolve_source(source)

    def sampler_for(spec: DiffusionSpec) -> SamplerSpec:
        s = spec.sampler(steps, **sampler_overrides)
        return s if strength is None else replace(s, start=start_for_strength(s.steps, strength))

    # bad editing inputs and settings fail here, in one line, before any model work
    edit = None if init is None else shard_edit(src.spec.sample_shape, src.spec.data_range, num, init, mask,
                                                mask_means)
    src.spec.plan(sampler_for(src.spec))
    choice = choose_backend(backend, src, log=log, batch=layout.micro_batch, precision=precision,
                            threads=threads, allow_inexact=allow_inexact)
    if REGISTRY[choice.name].artifact != "bundle":
        raise ConfigError(f"sharded runs open a bundle on every worker; --backend {choice.name} runs a PyTorch "
                          "module, use ort (or another bundle backend)")
    bundle = choice.bundle or bundle_for(src)  # an int8 bundle's fp32 graph when fp32 won
    spec = bundle.spec  # the manifest's own spec
    checked = None
    if spec.conditioning:
        if cond is None:
            raise ConfigError("this model is conditional: give --class, --classes or --labels for the shards")
        checked = check_conditioning(spec.conditioning, cond, num)
    elif cond is not None or guidance_scale not in (None, 1.0):
        raise ConfigError("this model is unconditional: drop --class/--classes/--labels/--guidance")
    if edit is not None and edit.image.shape[1:] != tuple(spec.sample_shape):
        raise ConfigError(f"the bundle's samples are {list(spec.sample_shape)}, the --init images "
                          f"{list(edit.image.shape[1:])}; give images of the bundle's shape")
    plan = spec.plan(sampler_for(spec))
    bundle_dir = bundle.directory.resolve()
    return ShardJob(bundle_dir=bundle_dir, source_key=bundle.onnx_sha256, plan=plan,
                    sample_shape=tuple(spec.sample_shape), seed=seed, layout=layout,
                    backend=choice.name, threads=threads, precision=choice.precision, cond=checked,
                    guidance_scale=spec.default_guidance if guidance_scale is None else guidance_scale,
                    guidance_rescale=guidance_rescale, allow_nonfinite=allow_nonfinite,
                    plan_conditioning=tuple(spec.conditioning), edit=edit)


DEFAULT_MICRO_BATCH = 16
