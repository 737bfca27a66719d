"""The Ray executor on one local Ray instance (2 CPUs) shared by every test in this file."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from ddpm_rt.errors import BundleError, DdpmRtError
from ddpm_rt.shards import LocalExecutor, ShardStore, run_shards
from tests.helpers.shards import export_tiny_bundle, job_for, read_all

ray = pytest.importorskip("ray")

from ddpm_rt.shards.ray_executor import RayExecutor  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return export_tiny_bundle(tmp_path_factory.mktemp("ray") / "tiny")


@pytest.fixture(scope="module")
def reference(bundle, tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("ref") / "out"
    run_shards(job_for(bundle, shard_size=64), out, LocalExecutor())
    return read_all(out)


def assert_each_shard_once(out, count: int) -> None:
    manifest = ShardStore(out).load_manifest()
    assert manifest is not None and sorted(manifest.shards) == list(range(count))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", *(f"shard-{k:05d}.npy" for k in range(count))])  # no temp or extra files


@pytest.mark.parametrize("shard_size", [8, 64])
def test_ray_gives_the_in_process_bytes(cluster, bundle, reference, tmp_path, shard_size):
    executor = RayExecutor(workers=2)
    summary = run_shards(job_for(bundle, shard_size=shard_size), tmp_path / "out", executor)
    assert sorted(summary.computed) == list(range(64 // shard_size))
    assert executor.stats.workers == min(2, 64 // shard_size) and executor.stats.retried == []
    assert read_all(tmp_path / "out").tobytes() == reference.tobytes()
    assert_each_shard_once(tmp_path / "out", 64 // shard_size)
    workers = {r.worker for r in ShardStore(tmp_path / "out").load_manifest().shards.values()}
    assert all(int(w.split(":")[1]) != os.getpid() for w in workers)  # computed in the actors


def test_worker_killed_mid_shard_is_retried(cluster, bundle, reference, tmp_path):
    """SIGKILL one actor after the first shard lands: its in-flight shards are redone, once each."""
    executor = RayExecutor(workers=2)
    killed: list[int] = []

    def progress(done: int, total: int) -> None:
        if 0 < done < total and not killed:
            killed.append(executor.stats.worker_pids[0])
            os.kill(killed[0], signal.SIGKILL)

    # 400 steps: a shard takes long enough that the killed actor is mid-shard, not idle
    job = job_for(bundle, steps=400)
    summary = run_shards(job, tmp_path / "out", executor, progress=progress)
    assert killed and executor.stats.retried, "the kill hit no shard in flight"
    assert sorted(summary.computed) == list(range(8))  # delivered exactly once each
    assert_each_shard_once(tmp_path / "out", 8)
    ref_out = tmp_path / "ref"
    run_shards(job, ref_out, LocalExecutor())
    assert read_all(tmp_path / "out").tobytes() == read_all(ref_out).tobytes()


def test_worker_error_is_raised_as_ours_in_one_line(cluster, tmp_path):
    """A typed error inside an actor (here: the bundle changed on disk after the driver checked it)
    reaches the driver as itself, in one line. (ort + fp16 is refused by the driver since the
    quality guard moved into prepare, so it no longer reaches an actor.)"""
    own = export_tiny_bundle(tmp_path / "tiny")
    job = job_for(own, num=16)
    (own / "denoiser.onnx").write_bytes(b"not an onnx graph")  # the actor's hash check fails
    with pytest.raises(BundleError, match="sha256|hash|changed") as e:
        run_shards(job, tmp_path / "out", RayExecutor(workers=1, max_restarts=0))
    assert "\n" not in str(e.value)


def test_out_of_retries_fails_in_one_line_and_the_rerun_resumes(cluster, bundle, tmp_path):
    executor = RayExecutor(workers=1, retries=0)
    killed: list[int] = []

    def progress(done: int, total: int) -> None:
        if 0 < done < total and not killed:
            killed.append(executor.stats.worker_pids[0])
            os.kill(killed[0], signal.SIGKILL)

    job = job_for(bundle, steps=400)
    with pytest.raises(DdpmRtError, match="rerun to resume") as e:
        run_shards(job, tmp_path / "out", executor, progress=progress)
    assert "\n" not in str(e.value)
    done = sorted(ShardStore(tmp_path / "out").load_manifest().shards)
    assert done and len(done) < 8
    summary = run_shards(job, tmp_path / "out", LocalExecutor())
    assert summary.skipped == done and sorted(summary.skipped + summary.computed) == list(range(8))
