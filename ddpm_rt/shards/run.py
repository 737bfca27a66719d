"""Run a sharded job into a directory: skip valid shards, compute the rest, record each one."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ddpm_rt.shards.executor import Executor, ExecutorStats, ShardResult
from ddpm_rt.shards.job import ShardJob
from ddpm_rt.shards.store import ShardStore

ProgressFn = Callable[[int, int], None]


@dataclass
class RunSummary:
    out: Path
    executor: str
    num: int
    shards: int
    computed: list[int] = field(default_factory=list)  # shard indices written by this run
    skipped: list[int] = field(default_factory=list)  # already complete and valid
    computed_samples: int = 0
    seconds: float = 0.0  # executor wall time, opening the workers included (stats.startup_s)
    stats: ExecutorStats = field(default_factory=ExecutorStats)

    @property
    def samples_per_s(self) -> float:
        """Samples computed per second once the workers were up (their startup excluded)."""
        busy = self.seconds - self.stats.startup_s
        return self.computed_samples / busy if busy > 0 else 0.0


def run_shards(job: ShardJob, out: Path, executor: Executor, progress: ProgressFn | None = None) -> RunSummary:
    """Bring `out` to a complete, valid shard directory for `job`; returns what was done."""
    store = ShardStore(out)
    manifest = store.open_manifest(job.identity(), job.layout.num)
    summary = RunSummary(Path(out), executor.name, job.layout.num, job.layout.count)
    todo = []
    for shard in job.layout.shards():
        if store.is_valid(manifest, shard):
            summary.skipped.append(shard.index)
        else:
            todo.append(shard)
    done = job.layout.num - sum(s.size for s in todo)
    if progress is not None:
        progress(done, job.layout.num)

    def deliver(result: ShardResult) -> None:
        nonlocal done
        store.write_shard(manifest, result.shard, result.samples, result.meta)
        summary.computed.append(result.shard.index)
        summary.computed_samples += result.shard.size
        done += result.shard.size
        if progress is not None:
            progress(done, job.layout.num)

    t0 = time.perf_counter()
    executor.run(job, todo, deliver)
    summary.seconds = time.perf_counter() - t0
    summary.stats = executor.stats
    missing = sorted({s.index for s in todo} - set(summary.computed))
    if missing:  # an executor that returns without every shard is a bug, not a user error
        raise RuntimeError(f"executor {executor.name} finished without shards {missing}")
    return summary
