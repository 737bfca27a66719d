"""The one place that turns a bundle directory into an open backend, and runs shards on it.

`prepare_job` (source -> bundle + plan, through `ddpm_rt.prepare`), `bundle_content_key` and
`open_shard_backend` (a `Bundle` opened on the registry; workers need no torch) are this
package's only calls into the source / backend API.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_rt.errors import BundleError
from ddpm_rt.plan import SamplingPlan
from ddpm_rt.runtime.backend import Backend
from ddpm_rt.shards.job import ShardJob
from ddpm_rt.shards.layout import ShardRange
from ddpm_rt.shards.noise import BatchNoise


def bundle_content_key(bundle_dir: Path) -> str:
    """The bundle's content key: sha256 of its ONNX graph, as its manifest records it."""
    path = Path(bundle_dir) / "ddpm_rt.json"
    try:
        key = json.loads(path.read_text()).get("onnx_sha256")
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"cannot read {path} ({e}); give a bundle from `ddpm-rt export`") from None
    if not isinstance(key, str):
        raise BundleError(f"{path} lacks onnx_sha256; re-export the bundle with `ddpm-rt export`")
    return key


def open_shard_backend(job: ShardJob, bundle_dir: Path | None = None) -> Backend:
    """Open `job.backend` on the bundle at `bundle_dir` (default: the job's) for one micro-batch."""
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.registry import open_backend
    from ddpm_rt.runtime.backend import BackendOptions

    bundle = load_bundle(Path(bundle_dir or job.bundle_dir))
    options = BackendOptions(threads=job.threads, precision=job.precision)
    return open_backend(job.backend, bundle, batch=job.layout.micro_batch, options=options)


class ShardSampler:
    """One open backend that computes shards of a job, micro-batch by micro-batch."""

    def __init__(self, job: ShardJob, bundle_dir: Path | None = None) -> None:
        self.job = job
        self.backend = open_shard_backend(job, bundle_dir)
        self.sample_shape = job.sample_shape
        self.meta: dict[str, Any] = {
            "backend": self.backend.name,
            "precision": job.precision,
            "threads": job.threads,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        }

    def _micro_batch(self, plan: SamplingPlan, first: int) -> np.ndarray:
        m = self.job.layout.micro_batch
        noise = BatchNoise(self.job.seed, range(first, first + m), self.sample_shape)
        x_init = noise.initial()
        if self.backend.device == "cpu":  # host loop: per-step draws in place, row b from stream b
            return self.backend.sample(plan, x_init, rng=noise)  # type: ignore[arg-type]
        return self.backend.sample(plan, x_init, noise=noise.step_noise(plan))

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
    micro_batch: int = 16,
    seed: int = 0,
    steps: int | None = None,
    backend: str = "ort",
    threads: int = 1,
    precision: str = "fp32",
    **sampler_overrides: Any,
) -> ShardJob:
    """A job for `source` (built-in name, checkpoint, bundle): its bundle (exported once) and plan."""
    from ddpm_rt.errors import ConfigError
    from ddpm_rt.prepare import bundle_for, choose_backend
    from ddpm_rt.registry import REGISTRY
    from ddpm_rt.shards.layout import ShardLayout
    from ddpm_rt.sources import resolve_source

    if threads < 1:
        raise ConfigError(f"--threads must be >= 1 for sharded runs (it is recorded per shard), got {threads}")
    layout = ShardLayout(num, shard_size, micro_batch)
    src = resolve_source(source)
    name = choose_backend(backend, src).name
    if REGISTRY[name].artifact != "bundle":
        raise ConfigError(f"sharded runs open a bundle on every worker; --backend {name} runs a PyTorch module, "
                          "use ort (or another bundle backend)")
    bundle_dir = bundle_for(src).directory.resolve()
    plan = src.spec.plan(src.spec.sampler(steps, **sampler_overrides))
    return ShardJob(bundle_dir=bundle_dir, source_key=bundle_content_key(bundle_dir), plan=plan,
                    sample_shape=tuple(src.spec.sample_shape), seed=seed, layout=layout,
                    backend=name, threads=threads, precision=precision)
