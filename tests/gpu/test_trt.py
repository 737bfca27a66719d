"""TensorRT: engine build + cache, and the trt backend (DeviceLoop + engine, with/without CUDA graph).

Skipped without CUDA or tensorrt. Written against the TensorRT 10 Python API; not run
in this project's CI or by its developers (no GPU was available), see docs/gpu.md.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from tests.cli_helpers import run_cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="needs tensorrt"),
]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from ddpm_rt.commands.selfcheck import pinned_source
    from ddpm_rt.sources import resolve_source

    cache = tmp_path_factory.mktemp("cache")
    src = pinned_source(resolve_source("digits"))  # one set of weights for eager and the bundle
    bundle = src.bundle_dir(cache)
    return src, bundle


def _reference(src, plan, x_init, noise):
    from ddpm_rt.eager import TorchBackend

    return TorchBackend(src.load_module()).sample(plan, x_init, noise=noise)


def _rel_rms(got, ref):
    return float(np.sqrt(np.mean((got - ref) ** 2)) / max(np.sqrt(np.mean(ref**2)), 1e-12))


def test_engine_is_built_once_then_cached(digits):
    from ddpm_rt.gpu.trt_build import BuildConfig, ensure_engine

    _, bundle = digits
    cfg = BuildConfig(precision="fp32", min_batch=1, opt_batch=4, max_batch=8, opt_level=1)
    first = ensure_engine(bundle, cfg)
    second = ensure_engine(bundle, cfg)
    assert first.plan_path == second.plan_path and first.plan_path.parent == bundle / "engines"
    assert not second.built
    assert ensure_engine(bundle, cfg, reuse_covering=2).plan_path == first.plan_path


@pytest.mark.parametrize("cuda_graph", [True, False])
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_trt_backend_matches_eager(digits, cuda_graph, precision, tol):
    from ddpm_rt.prepare import open_for
    from ddpm_rt.runtime.backend import BackendOptions

    src, bundle = digits
    plan = src.spec.plan(src.spec.sampler(50))
    x_init = np.random.default_rng(0).standard_normal((4, *src.spec.sample_shape), dtype=np.float32)
    noise = np.random.default_rng(1).standard_normal((plan.steps, *x_init.shape), dtype=np.float32)
    ref = _reference(src, plan, x_init, noise)
    opts = BackendOptions(precision=precision, cuda_graph=cuda_graph, cache_dir=str(bundle.parent))
    with open_for("trt", src, 4, opts) as be:
        got = be.sample(plan, x_init, noise=noise)
        again = be.sample(plan, x_init, noise=noise)
        assert be.loop.captures == int(cuda_graph)
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, again)
    assert _rel_rms(got, ref) <= tol


def test_batch_outside_engine_range_is_config_error(digits):
    from ddpm_rt.errors import ConfigError
    from ddpm_rt.gpu.trt_backend import TrtBackend, TrtEngine
    from ddpm_rt.gpu.trt_build import BuildConfig, ensure_engine

    src, bundle = digits
    rec = ensure_engine(bundle, BuildConfig(min_batch=1, opt_batch=2, max_batch=2, opt_level=1))
    be = TrtBackend(TrtEngine(rec.plan_path), cuda_graph=False)
    plan = src.spec.plan(src.spec.sampler(5))
    with pytest.raises(ConfigError, match="outside the engine's range"):
        be.sample(plan, np.zeros((3, *src.spec.sample_shape), dtype=np.float32))


def test_build_cli_builds_then_reuses(digits, tmp_path):
    _, bundle = digits
    args = ("build", str(bundle), "--max-batch", "2", "--opt-level", "1", "--cache-dir", str(tmp_path), "--json")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["built"] is True
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["built"] is False and summary["engine"].startswith(str(tmp_path))
