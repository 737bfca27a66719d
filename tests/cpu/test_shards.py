"""Sharded sampling: per-sample streams, bytes independent of shard size, resume, refusals."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm_rt.errors import BackendUnavailable, ConfigError, SourceError
from ddpm_rt.runtime.loop import sample_loop
from ddpm_rt.shards import (
    BatchNoise,
    LocalExecutor,
    ShardLayout,
    ShardStore,
    run_shards,
    sample_generator,
)
from tests.helpers.shards import JOB, TINY_SPEC, export_tiny_bundle, job_for, read_all  # noqa: F401


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return export_tiny_bundle(tmp_path_factory.mktemp("shards") / "tiny")


@pytest.fixture(scope="module")
def reference(bundle: Path, tmp_path_factory) -> np.ndarray:
    """--num 64 in one shard of 64: the bytes every other layout must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "out"
    run_shards(job_for(bundle, shard_size=64), out, LocalExecutor())
    return read_all(out)


# -- noise streams -----------------------------------------------------------------------


def test_batch_noise_rows_are_the_per_sample_streams():
    noise = BatchNoise(3, [5, 6, 7], (1, 4, 4))
    x = noise.initial()
    z = np.empty_like(x)
    noise.standard_normal(dtype=np.float32, out=z)
    for row, i in enumerate([5, 6, 7]):
        g = sample_generator(3, i)
        assert np.array_equal(x[row], g.standard_normal((1, 4, 4), dtype=np.float32))
        assert np.array_equal(z[row], g.standard_normal((1, 4, 4), dtype=np.float32))
    assert not np.array_equal(x[0], x[1])
    assert not np.array_equal(sample_generator(3, 5).standard_normal(4), sample_generator(4, 5).standard_normal(4))


def test_step_noise_array_equals_in_place_draws():
    """Device loops take noise= arrays: same values as the host loop's in-place per-sample draws."""
    plan = TINY_SPEC.plan(TINY_SPEC.sampler(12, sampler="ddpm"))
    assert plan.stochastic

    def model(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.tanh(x) * 0.3 + t[:, None, None, None] * 1e-4

    host_noise = BatchNoise(1, range(16, 24), (1, 8, 8))
    dev_noise = BatchNoise(1, range(16, 24), (1, 8, 8))
    x_host = sample_loop(model, plan, host_noise.initial(), rng=host_noise)
    x_dev = sample_loop(model, plan, dev_noise.initial(), noise=dev_noise.step_noise(plan))
    assert np.array_equal(x_host, x_dev)


def test_seed_out_of_range_is_refused(bundle):
    with pytest.raises(ConfigError, match="--seed"):
        job_for(bundle, seed=-1)


# -- layout --------------------------------------------------------------------------------


def test_layout_ranges_and_padding():
    layout = ShardLayout(num=70, shard_size=32, micro_batch=16)
    assert [(s.start, s.stop) for s in layout.shards()] == [(0, 32), (32, 64), (64, 70)]


@pytest.mark.parametrize(("num", "shard", "mb", "flag"), [(64, 12, 8, "--shard-size"), (0, 8, 8, "--num"),
                                                           (64, 8, 0, "--micro-batch")])
def test_layout_errors_are_one_line(num, shard, mb, flag):
    with pytest.raises(ConfigError, match=flag) as e:
        ShardLayout(num, shard, mb)
    assert "\n" not in str(e.value)


# -- bytes identity, resume, corruption --------------------------------------------------------


def test_shard_size_8_gives_the_bytes_of_shard_size_64(bundle, reference, tmp_path):
    summary = run_shards(job_for(bundle, shard_size=8), tmp_path / "out", LocalExecutor())
    assert summary.computed == list(range(8)) and summary.skipped == []
    got = read_all(tmp_path / "out")
    assert got.shape == (64, 1, 8, 8) and got.dtype == np.float32
    assert got.tobytes() == reference.tobytes()
    assert len(np.unique(got.reshape(64, -1), axis=0)) == 64  # every sample its own stream


def test_sample_depends_only_on_seed_and_index(bundle, reference, tmp_path):
    """A run of the first 24 samples alone (last micro-batch padded) repeats them bit for bit."""
    run_shards(job_for(bundle, num=20, shard_size=16), tmp_path / "out", LocalExecutor())
    assert read_all(tmp_path / "out").tobytes() == reference[:20].tobytes()


def test_manifest_records_how_each_shard_was_made(bundle, tmp_path):
    job = job_for(bundle, num=20, shard_size=16)
    run_shards(job, tmp_path / "out", LocalExecutor())
    manifest = ShardStore(tmp_path / "out").load_manifest()
    assert manifest is not None and manifest.num == 20
    assert manifest.identity["source"]["onnx_sha256"] == job.source_key
    assert manifest.identity["micro_batch"] == 8 and manifest.identity["seed_scheme"]["seed"] == 7
    assert manifest.identity["plan"]["steps"] == 10
    recs = [manifest.shards[k] for k in sorted(manifest.shards)]
    assert [(r.start, r.stop) for r in recs] == [(0, 16), (16, 20)]
    assert {(r.backend, r.precision, r.threads) for r in recs} == {("ort", "fp32", 1)}
    assert all(r.seconds > 0 and r.cpu_seconds > 0 for r in recs)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_rerun_skips_complete_shards_and_redoes_deleted_ones(bundle, reference, tmp_path):
    out = tmp_path / "out"
    job = job_for(bundle)
    run_shards(job, out, LocalExecutor())
    kept = (out / "shard-00000.npy").stat().st_mtime_ns
    (out / "shard-00003.npy").unlink()
    (out / "shard-00005.npy").unlink()
    summary = run_shards(job, out, LocalExecutor())
    assert sorted(summary.computed) == [3, 5] and len(summary.skipped) == 6
    assert (out / "shard-00000.npy").stat().st_mtime_ns == kept
    assert read_all(out).tobytes() == reference.tobytes()


def test_corrupt_shard_is_detected_and_redone(bundle, reference, tmp_path):
    out = tmp_path / "out"
    job = job_for(bundle)
    run_shards(job, out, LocalExecutor())
    path = out / "shard-00002.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # one flipped bit in the last sample
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="incomplete"):
        read_all(out)  # a reader refuses it too
    summary = run_shards(job, out, LocalExecutor())
    assert summary.computed == [2]
    assert read_all(out).tobytes() == reference.tobytes()


KILL_AFTER_SHARDS = """
import os, signal, sys
from pathlib import Path
from ddpm_rt.shards import LocalExecutor, prepare_job, run_shards

job = prepare_job(sys.argv[1], num=64, shard_size=8, **{settings!r})
def progress(done, total):
    if done >= 24:  # three shards written: die the hard way, mid-run
        os.kill(os.getpid(), signal.SIGKILL)
run_shards(job, Path(sys.argv[2]), LocalExecutor(), progress=progress)
"""


def test_run_killed_midway_resumes_with_only_the_missing_shards(bundle, reference, tmp_path):
    out = tmp_path / "out"
    script = KILL_AFTER_SHARDS.format(settings=JOB)
    proc = subprocess.run([sys.executable, "-c", script, str(bundle), str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert sorted(p.name for p in out.glob("shard-*.npy")) == [f"shard-{k:05d}.npy" for k in range(3)]
    summary = run_shards(job_for(bundle), out, LocalExecutor())
    assert summary.skipped == [0, 1, 2] and summary.computed == [3, 4, 5, 6, 7]
    assert read_all(out).tobytes() == reference.tobytes()


def test_num_may_grow_but_not_shrink(bundle, reference, tmp_path):
    out = tmp_path / "out"
    run_shards(job_for(bundle, num=40, shard_size=16), out, LocalExecutor())
    grown = run_shards(job_for(bundle, num=64, shard_size=16), out, LocalExecutor())
    assert grown.skipped == [0, 1] and grown.computed == [2, 3]  # shard 2 held 8 samples, now 16
    assert read_all(out).tobytes() == reference.tobytes()
    with pytest.raises(ConfigError, match="may only grow"):
        run_shards(job_for(bundle, num=32, shard_size=16), out, LocalExecutor())


@pytest.mark.parametrize(("change", "named"), [
    ({"seed": 8}, "seed"),
    ({"steps": 11}, "plan"),
    ({"sampler": "ddim"}, "plan"),
    ({"micro_batch": 4}, "micro-batch"),
    ({"shard_size": 16}, "shard-size"),
])
def test_mismatched_rerun_is_refused_in_one_line(bundle, tmp_path, change, named):
    out = tmp_path / "out"
    run_shards(job_for(bundle, num=16), out, LocalExecutor())
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    with pytest.raises(ConfigError, match=named) as e:
        run_shards(job_for(bundle, num=16, **change), out, LocalExecutor())
    assert "\n" not in str(e.value) and "--out" in str(e.value)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before  # nothing touched


def test_other_model_is_refused(bundle, tmp_path):
    out = tmp_path / "out"
    job = job_for(bundle, num=16)
    run_shards(job, out, LocalExecutor())
    with pytest.raises(ConfigError, match="another model"):
        run_shards(dataclasses.replace(job, source_key="0" * 64), out, LocalExecutor())


def test_foreign_directories_are_refused(bundle, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        run_shards(job_for(bundle, num=16), tmp_path / "file", LocalExecutor())
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "shard-00000.npy").write_bytes(b"")
    with pytest.raises(ConfigError, match="no manifest.json"):
        run_shards(job_for(bundle, num=16), tmp_path / "loose", LocalExecutor())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a version-1"):
        run_shards(job_for(bundle, num=16), tmp_path / "bad", LocalExecutor())


def test_ray_executor_without_ray_names_the_extra(bundle, tmp_path, monkeypatch):
    from ddpm_rt.shards.ray_executor import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install 'ddpm-rt\[ray\]'") as e:
        run_shards(job_for(bundle, num=16), tmp_path / "out", RayExecutor())
    assert "\n" not in str(e.value)


def test_progress_covers_the_whole_run(bundle, tmp_path):
    out = tmp_path / "out"
    job = job_for(bundle, num=32)
    run_shards(job, out, LocalExecutor())
    (out / "shard-00001.npy").unlink()
    seen: list[tuple[int, int]] = []
    run_shards(job, out, LocalExecutor(), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(24, 32), (32, 32)]



# -- streaming quality report ---------------------------------------------------------------


def write_shard_dir(out: Path, samples: np.ndarray, shard_size: int) -> Path:
    """A complete shard directory holding `samples` (as `ddpm-rt sample --out` would lay it out)."""
    store = ShardStore(out)
    identity = {"source": {"onnx_sha256": "test"}, "plan": {}, "seed_scheme": {}, "micro_batch": 1,
                "shard_size": shard_size, "sample_shape": list(samples.shape[1:]), "dtype": "float32"}
    manifest = store.open_manifest(identity, samples.shape[0])
    meta = {"backend": "test", "precision": "fp32", "threads": 1}
    for shard in ShardLayout(samples.shape[0], shard_size, 1).shards():
        store.write_shard(manifest, shard, samples[shard.start : shard.stop], meta)
    return out


def assert_same_report(streamed: dict, in_memory: dict, rel: float = 1e-9) -> None:
    for key, want in in_memory.items():
        got = streamed[key]
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=rel, abs=1e-12), key
        else:
            assert got == want, key


def test_streamed_digits_report_equals_the_in_memory_one(tmp_path, monkeypatch):
    from ddpm_rt.datasets import load_dataset
    from ddpm_rt.quality import streaming
    from ddpm_rt.quality.report import quality_report

    images = load_dataset("digits16").train[-300:].astype(np.float32)
    images[:5] *= 1.5  # some out-of-range pixels, so that count is exercised
    loaded: list[int] = []
    real_load = streaming._load
    monkeypatch.setattr(streaming, "_load", lambda p: loaded.append(len(real_load(p))) or real_load(p))
    report = streaming.shard_quality_report("digits", write_shard_dir(tmp_path / "d", images, 64))
    assert report["shards"] == 5 and max(loaded) == 64  # one shard at a time
    # dead ReLU features leave null eigenvalues whose sqrt turns 1e-15 covariance rounding into
    # ~1e-7 relative FD differences (the covariance itself agrees to 1e-14: test below)
    assert_same_report(report, quality_report("digits16", images), rel=1e-6)


def test_online_gaussian_matches_numpy():
    from ddpm_rt.quality.streaming import OnlineGaussian

    f = np.random.default_rng(3).standard_normal((301, 5)) * [1, 10, 100, 1e-3, 5] + 50
    g = OnlineGaussian(5)
    for part in np.array_split(f, [1, 2, 100, 250]):
        g.update(part)
    assert g.n == 301
    np.testing.assert_allclose(g.mean, f.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(g.covariance(), np.cov(f, rowvar=False), rtol=1e-10, atol=1e-14)


@pytest.fixture
def fast_sliced_wasserstein(monkeypatch):
    """Fewer projections and quantiles on both sides (np.quantile dominates the 2-D report's time)."""
    import functools

    from ddpm_rt.quality import report, streaming
    from ddpm_rt.quality.distances import sliced_wasserstein

    fast = functools.partial(sliced_wasserstein, n_projections=16, n_quantiles=50)
    monkeypatch.setattr(report, "sliced_wasserstein", fast)
    monkeypatch.setattr(streaming, "sliced_wasserstein", fast)


def test_streamed_points_report_equals_the_in_memory_one(tmp_path, fast_sliced_wasserstein):
    from ddpm_rt.quality.report import quality_report
    from ddpm_rt.quality.streaming import shard_quality_report

    pts = (np.random.default_rng(0).standard_normal((500, 2)) * 0.5).astype(np.float32)
    report = shard_quality_report("swissroll", write_shard_dir(tmp_path / "p", pts, 96))
    assert report["sliced_wasserstein_points"] == 500  # below the reservoir size: exact
    assert_same_report(report, quality_report("swissroll", pts))


def test_reservoir_is_uniform_and_independent_of_the_batch_split():
    from ddpm_rt.quality.streaming import Reservoir

    rows = np.arange(1000, dtype=np.float64)[:, None]
    a, b = Reservoir(100), Reservoir(100)
    for part in np.array_split(rows, 7):
        a.update(part)
    b.update(rows)
    assert a.sample().shape == (100, 1) and np.array_equal(a.sample(), b.sample())
    assert len(np.unique(a.sample())) == 100 and a.sample().max() > 500  # not just the first rows
    small = Reservoir(100)
    small.update(rows[:40])
    assert np.array_equal(small.sample(), rows[:40])  # below its size it keeps everything, in order


def test_reservoir_caps_the_sliced_wasserstein_points(tmp_path, monkeypatch, fast_sliced_wasserstein):
    from ddpm_rt.quality import streaming

    monkeypatch.setattr(streaming, "SW_RESERVOIR", 100)
    pts = np.random.default_rng(1).standard_normal((300, 2)).astype(np.float32)
    report = streaming.shard_quality_report("swissroll", write_shard_dir(tmp_path / "a", pts, 64))
    assert report["sliced_wasserstein_points"] == 100 and report["n_samples"] == 300


def test_quality_command_reads_a_shard_directory(tmp_path, capsys):
    import json

    from ddpm_rt.commands.quality import quality as quality_command
    from ddpm_rt.datasets import load_dataset

    out = write_shard_dir(tmp_path / "d", load_dataset("digits16").train[:64].astype(np.float32), 16)
    quality_command(out, dataset="digits", json_out=True)
    report = json.loads(capsys.readouterr().out)
    assert report["n_samples"] == 64 and report["shards"] == 4 and report["fd"] > 0
    (out / "shard-00001.npy").unlink()
    with pytest.raises(SourceError, match="incomplete") as e:
        quality_command(out, dataset="digits", json_out=True)
    assert "\n" not in str(e.value) and "rerun" in str(e.value)
    with pytest.raises(SourceError, match="no manifest.json"):
        quality_command(tmp_path, dataset="digits", json_out=True)


# -- device path, bundle shipping, Ray pool sizing (no Ray needed) -----------------------------


class _FakeBackend:
    """A host or 'device' backend over one numpy model: device ones get noise= arrays, like trt."""

    name = "fake"

    def __init__(self, device: str) -> None:
        self.device = device
        self.noise_arrays = 0

    def sample(self, plan, x_init, *, noise=None, rng=None, progress=None, guidance=None, edit=None,
               allow_nonfinite=False):
        assert guidance is None and not allow_nonfinite  # an unconditional job, defaults
        assert (noise is None) == (self.device == "cpu"), "host loops draw in place, device loops take arrays"
        self.noise_arrays += noise is not None
        return sample_loop(lambda x, t: np.tanh(x) * 0.3, plan, x_init, noise=noise, rng=rng, edit=edit)

    def close(self) -> None:
        pass


def test_device_backends_get_the_same_noise_as_arrays(bundle, monkeypatch):
    from ddpm_rt.shards import ShardSampler, engine

    job = job_for(bundle, num=24, shard_size=24)
    out = {}
    for device in ("cpu", "cuda"):
        fake = _FakeBackend(device)
        monkeypatch.setattr(engine, "open_shard_backend", lambda job, bundle_dir=None, fake=fake: fake)
        out[device], meta = ShardSampler(job).compute(job.layout.shard(0))
        assert meta["backend"] == "fake" and fake.noise_arrays == (3 if device == "cuda" else 0)
    assert out["cpu"].tobytes() == out["cuda"].tobytes()


def test_bundle_is_unpacked_once_per_content(bundle, tmp_path):
    from ddpm_rt.shards.bundle_ship import pack_bundle, unpack_bundle

    files = pack_bundle(bundle)
    assert set(files) == {"ddpm_rt.json", "denoiser.onnx"}
    first = unpack_bundle(files, tmp_path)
    assert unpack_bundle(files, tmp_path) == first
    assert (first / "denoiser.onnx").read_bytes() == (bundle / "denoiser.onnx").read_bytes()
    other = unpack_bundle({**files, "ddpm_rt.json": files["ddpm_rt.json"] + b" "}, tmp_path)
    assert other != first
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, other.name])  # no temp dirs


@pytest.mark.parametrize(("resources", "cpus", "gpus", "want"), [
    ({"CPU": 16.0}, 1.0, 0.0, 16),
    ({"CPU": 16.0}, 4.0, 0.0, 4),
    ({"CPU": 16.0, "GPU": 2.0}, 1.0, 1.0, 2),
    ({"CPU": 1.0}, 2.0, 0.0, 1),
])
def test_ray_pool_size_follows_the_cluster(resources, cpus, gpus, want):
    from ddpm_rt.shards.ray_executor import RayExecutor

    class FakeRay:
        @staticmethod
        def cluster_resources() -> dict[str, float]:
            return resources

    assert RayExecutor(num_gpus=gpus)._pool_size(FakeRay, cpus) == want
    assert RayExecutor(workers=3, num_gpus=gpus)._pool_size(FakeRay, cpus) == 3
