"""The Ray executor: a pool of actors, each opening one backend once, fed a bounded number of shards.

* Bundle: packed to bytes once on the driver and put in Ray's object store; every actor
  unpacks it once per node (`bundle_ship`). No shared filesystem, no re-export per worker.
* Outputs: workers return sample arrays; the driver is the only writer of shard files and
  the manifest. One writer means no races on the manifest and no shared output filesystem;
  the price is that samples cross the network once, to the driver (1 KiB per digits sample).
* Back-pressure: at most `in_flight` shards per actor are submitted at a time; the rest wait
  in the driver as `ShardRange`s (three integers each), never as submitted tasks.
* Failures: an actor whose process dies is restarted by Ray (`max_restarts`); the shards it
  held fail with `RayActorError` and the driver resubmits them (up to `retries` times each).
  Errors raised by our own code in a worker (a `DdpmRtError`) are not retried: they are raised.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from ddpm_rt.errors import BackendUnavailable, ConfigError, DdpmRtError
from ddpm_rt.shards.executor import Deliver, ExecutorStats, ShardResult
from ddpm_rt.shards.job import ShardJob
from ddpm_rt.shards.layout import ShardRange

RESTART_REST_S = 1.0  # seconds a slot rests after its worker died (times its consecutive failures)

RAY_HINT = "pip install 'ddpm-rt[ray]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BackendUnavailable(f"--executor ray needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


class ShardWorker:
    """The actor body (made a Ray actor at run time, so this module imports without Ray)."""

    def __init__(self, job: ShardJob, bundle_files: dict[str, bytes]) -> None:
        from ddpm_rt.shards.bundle_ship import unpack_bundle
        from ddpm_rt.shards.engine import ShardSampler

        # Our typed errors (bad precision, broken bundle) are kept for `ready` to raise: an
        # actor that raised in __init__ reaches the driver only as text, and Ray would restart it.
        self.error: DdpmRtError | None = None
        try:
            self.sampler = ShardSampler(job, unpack_bundle(bundle_files))
        except DdpmRtError as e:
            self.error = e

    def ready(self) -> int:
        """This worker's pid once its backend is open; its opening error otherwise."""
        if self.error is not None:
            raise self.error
        return os.getpid()

    def compute(self, shard: ShardRange) -> tuple[Any, dict[str, Any]]:
        return self.sampler.compute(shard)


def _worker_error(err: Exception) -> DdpmRtError | None:
    """Our own typed error behind a Ray task error (Ray keeps the original as `cause`), if any."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, DdpmRtError) else None


class RayExecutor:
    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        num_cpus: float | None = None,
        num_gpus: float = 0.0,
        in_flight: int = 2,
        retries: int = 3,
        max_restarts: int = 3,
    ) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        if in_flight < 1:
            raise ConfigError(f"in_flight must be >= 1, got {in_flight}")
        self.address = address
        self.workers = workers  # None: as many as the cluster's CPUs (or GPUs) allow
        self.num_cpus = num_cpus  # per actor; None: the job's backend thread count
        self.num_gpus = num_gpus  # per actor
        self.in_flight = in_flight
        self.retries = retries
        self.max_restarts = max_restarts
        self.stats = ExecutorStats()
        self._bundle_ref: Any = None
        self._job_ref: Any = None

    # -- cluster and pool --------------------------------------------------------------

    def _connect(self, ray: Any) -> bool:
        """ray.init for `address` (or a local instance) unless already connected; True if we did."""
        if ray.is_initialized():
            return False
        try:
            ray.init(address=self.address, log_to_driver=False, include_dashboard=False)
        except ConnectionError as e:
            raise ConfigError(f"cannot reach the Ray cluster at {self.address!r}: {e}") from None
        return True

    def _pool_size(self, ray: Any, num_cpus: float) -> int:
        if self.workers is not None:
            return self.workers
        res = ray.cluster_resources()
        by_cpu = int(res.get("CPU", 1) // num_cpus) if num_cpus > 0 else 1
        by_gpu = int(res.get("GPU", 0) // self.num_gpus) if self.num_gpus > 0 else by_cpu
        return max(1, min(by_cpu, by_gpu))

    def _start(self, ray: Any, job: ShardJob, shards: int) -> list[Any]:
        from ddpm_rt.shards.bundle_ship import pack_bundle

        t0 = time.perf_counter()
        num_cpus = float(self.num_cpus if self.num_cpus is not None else job.threads)
        size = min(self._pool_size(ray, num_cpus), shards)
        actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=self.num_gpus,
                               max_restarts=self.max_restarts)(ShardWorker)
        # once; each node fetches it once. Held for the whole run: a restarted actor reads it again.
        self._bundle_ref = ray.put(pack_bundle(job.bundle_dir))
        self._job_ref = ray.put(job)  # once too: it holds every sample's labels and editing inputs
        actors = [actor_cls.remote(self._job_ref, self._bundle_ref) for _ in range(size)]
        try:  # wait for every backend to open, so a broken bundle fails here, in one line
            pids = ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as e:
            raise self._as_error(e, "a worker failed to start") from None
        self.stats = ExecutorStats(workers=size, startup_s=time.perf_counter() - t0, worker_pids=list(pids))
        return actors

    def _as_error(self, err: Exception, what: str) -> DdpmRtError:
        own = _worker_error(err)
        if own is not None:
            return own
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return DdpmRtError(f"{what}: {first}")

    # -- the driver loop ---------------------------------------------------------------

    def run(self, job: ShardJob, shards: Sequence[ShardRange], deliver: Deliver) -> None:
        ray = import_ray()
        if not shards:
            return
        owns = self._connect(ray)
        try:
            self._run(ray, job, shards, deliver)
        finally:
            self._bundle_ref = self._job_ref = None
            if owns:
                ray.shutdown()

    def _run(self, ray: Any, job: ShardJob, shards: Sequence[ShardRange], deliver: Deliver) -> None:
        actors = self._start(ray, job, len(shards))
        queue: deque[ShardRange] = deque(shards)
        pending: dict[Any, tuple[ShardRange, int]] = {}  # task ref -> (shard, actor slot)
        load = [0] * len(actors)
        attempts: dict[int, int] = {}
        failures = [0] * len(actors)  # consecutive failed shards per actor
        give_up = (self.max_restarts + 1) * self.in_flight  # more than this: Ray stopped restarting it
        live = set(range(len(actors)))
        resting = [0.0] * len(actors)  # monotonic time before which a slot whose worker died gets no work
        while queue or pending:
            # top every live actor up to `in_flight` shards, healthiest first; a slot whose worker just
            # died rests while Ray restarts it (work sent at once can meet the dead process again)
            now = time.monotonic()
            for slot in sorted(live, key=lambda a: failures[a]):
                while queue and load[slot] < self.in_flight and resting[slot] <= now:
                    shard = queue.popleft()
                    pending[actors[slot].compute.remote(shard)] = (shard, slot)
                    load[slot] += 1
            if not pending:
                if not live:
                    raise DdpmRtError(f"every Ray worker died; {len(queue)} shards were not computed")
                time.sleep(max(0.0, min(resting[a] for a in live) - now))
                continue
            [ref], _ = ray.wait(list(pending), num_returns=1)
            shard, slot = pending.pop(ref)
            load[slot] -= 1
            try:
                samples, meta = ray.get(ref)
            # the worker process died, or its node with the result: resubmit the shard
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError):
                attempts[shard.index] = attempts.get(shard.index, 0) + 1
                if attempts[shard.index] > self.retries:
                    raise DdpmRtError(
                        f"shard {shard.index} failed {attempts[shard.index]} times because its worker "
                        "or node died; check the workers' memory and logs, then rerun to resume"
                    ) from None
                self.stats.retried.append(shard.index)
                queue.appendleft(shard)
                failures[slot] += 1
                resting[slot] = time.monotonic() + RESTART_REST_S * failures[slot]
                if failures[slot] > give_up:
                    live.discard(slot)
                continue
            except ray.exceptions.RayTaskError as e:
                raise self._as_error(e, f"shard {shard.index} failed") from None
            failures[slot] = 0
            deliver(ShardResult(shard, samples, meta))
