"""Shared by the shard tests (in-process and Ray): a tiny bundle, a job, reading a shard directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpm_rt.exporter.export import ExportOptions, export_bundle
from ddpm_rt.schedule import ScheduleSpec
from ddpm_rt.shards import iter_shards, prepare_job
from ddpm_rt.spec import DiffusionSpec
from tests.helpers.sources import module_source
from tests.helpers.tiny import make

# a conv + GroupNorm + attention denoiser on 1x8x8: batch-coupled ops if anything is
TINY_SPEC = DiffusionSpec(ScheduleSpec(kind="linear", num_train_timesteps=1000), "epsilon", (1, 8, 8),
                          clip=(-1.0, 1.0))
JOB = {"micro_batch": 8, "steps": 10, "sampler": "ddpm", "threads": 1, "seed": 7}  # ddpm: noise every step


def export_tiny_bundle(out: Path) -> Path:
    source = module_source(make(), TINY_SPEC, ref="tests.helpers.tiny:make")
    export_bundle(source, out, ExportOptions(trajectory_steps=0), lambda _: None)
    return out


def job_for(bundle: Path, **overrides):
    settings = {**JOB, "num": 64, "shard_size": 8, **overrides}
    return prepare_job(str(bundle), **settings)


def read_all(out: Path) -> np.ndarray:
    return np.concatenate(list(iter_shards(out)))
