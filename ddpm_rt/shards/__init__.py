"""Sharded, resumable sampling of many samples: per-sample noise streams, fixed micro-batches,
a checksummed shard directory, and executors (in-process, or Ray actors via `ray_executor`).

Typical use::

    job = prepare_job("digits", num=50_000, shard_size=1024, micro_batch=16, steps=50)
    summary = run_shards(job, Path("out"), LocalExecutor(), progress=Progress("sampling"))
"""

from ddpm_rt.shards.engine import ShardSampler, prepare_job
from ddpm_rt.shards.executor import Executor, LocalExecutor, ShardResult
from ddpm_rt.shards.job import ShardJob
from ddpm_rt.shards.layout import ShardLayout, ShardRange
from ddpm_rt.shards.noise import BatchNoise, sample_generator
from ddpm_rt.shards.run import RunSummary, run_shards
from ddpm_rt.shards.store import ShardStore, iter_shards, open_complete

__all__ = [
    "BatchNoise", "Executor", "LocalExecutor", "RunSummary", "ShardJob", "ShardLayout", "ShardRange",
    "ShardResult", "ShardSampler", "ShardStore", "iter_shards", "open_complete",
    "prepare_job", "run_shards", "sample_generator",
]
