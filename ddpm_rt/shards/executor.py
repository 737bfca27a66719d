"""The executor protocol, and the in-process executor (one backend, opened once, shards in turn)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ddpm_rt.shards.job import ShardJob
from ddpm_rt.shards.layout import ShardRange


@dataclass
class ShardResult:
    shard: ShardRange
    samples: np.ndarray  # float32 [shard.size, ...]
    meta: dict[str, Any]  # backend, precision, threads, worker, seconds


Deliver = Callable[[ShardResult], None]


@dataclass
class ExecutorStats:
    """What an executor did besides delivering shards (reported by the run summary)."""

    workers: int = 0
    startup_s: float = 0.0  # opening the backend(s): workers started and ready
    retried: list[int] = field(default_factory=list)  # shard indices resubmitted after a worker died
    worker_pids: list[int] = field(default_factory=list)


class Executor(Protocol):
    name: str
    stats: ExecutorStats

    def run(self, job: ShardJob, shards: Sequence[ShardRange], deliver: Deliver) -> None:
        """Compute every shard in `shards` and call `deliver` once per shard, in this process."""
        ...


class LocalExecutor:
    """Runs shards one by one in this process on one backend opened once."""

    name = "local"

    def __init__(self) -> None:
        self.stats = ExecutorStats()

    def run(self, job: ShardJob, shards: Sequence[ShardRange], deliver: Deliver) -> None:
        import os
        import time

        from ddpm_rt.shards.engine import ShardSampler

        if not shards:
            return
        t0 = time.perf_counter()
        with ShardSampler(job) as sampler:
            self.stats = ExecutorStats(workers=1, startup_s=time.perf_counter() - t0,
                                       worker_pids=[os.getpid()])
            for shard in shards:
                samples, meta = sampler.compute(shard)
                deliver(ShardResult(shard, samples, meta))
