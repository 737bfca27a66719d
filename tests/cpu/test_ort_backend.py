"""ONNX Runtime CPU backend: parity with eager torch, IO binding without per-step allocation,
the optimized-graph cache, error paths, and `auto` choosing ORT on a CPU-only machine."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_rt.bundle.load import load_bundle
from ddpm_rt.errors import BackendUnavailable, BundleError, ConfigError
from ddpm_rt.models.catalog import get_builtin
from ddpm_rt.prepare import choose_backend, open_for
from ddpm_rt.registry import open_backend
from ddpm_rt.runtime import ort_cache
from ddpm_rt.runtime.backend import BackendOptions
from ddpm_rt.runtime.loop import initial_noise, sample_loop
from ddpm_rt.schedule import ScheduleSpec
from ddpm_rt.sources import ModelSource
from ddpm_rt.spec import DiffusionSpec
from tests.helpers.bundles import export, make_source, write_manifest

ORT = BackendOptions(threads=1)


@pytest.fixture(scope="module")
def swissroll(tmp_path_factory) -> ModelSource:
    return make_source("swissroll", tmp_path_factory.mktemp("swissroll"))


def test_full_plan_parity_with_torch(swissroll):
    """DDPM ancestral sampling over all 40 steps, same initial and per-step noise: ORT == eager."""
    plan = swissroll.spec.plan(swissroll.spec.sampler(40))
    assert plan.stochastic and plan.clip is not None
    rng = np.random.default_rng(1)
    x_init = initial_noise((64, 2), rng)
    noise = rng.standard_normal((plan.steps, 64, 2), dtype=np.float32)
    finals = {}
    for name in ("torch", "ort"):
        with open_for(name, swissroll, 64, ORT) as be:
            finals[name] = be.sample(plan, x_init, noise=noise)
    assert np.all(np.isfinite(finals["ort"]))
    assert np.max(np.abs(finals["ort"] - finals["torch"])) <= 1e-4


def test_digits_single_call_parity(tmp_path):
    src = make_source("digits", tmp_path / "digits")
    x = initial_noise((3, 1, 16, 16), np.random.default_rng(0))
    t = np.array([999.0, 500.0, 0.0], dtype=np.float32)
    with torch.inference_mode():
        ref = src.load_module()(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    with open_for("ort", src, 4, ORT) as be:
        out = be(x, t)  # batch 3 on a backend opened for 4: bound to a slice of the output
        assert out.shape == (3, 1, 16, 16)
        assert np.max(np.abs(out - ref)) <= 1e-5


def test_loop_buffers_are_bound_not_copied(swissroll):
    """The loop's x/t arrays become the graph inputs, and the output is our preallocated buffer."""
    with open_for("ort", swissroll, 8, ORT) as be:
        x = np.ones((8, 2), np.float32)
        t = np.full(8, 5.0, np.float32)
        out1 = be(x, t)
        x[:] = 0.5  # an in-place update of the bound buffer is seen by the next run
        out2 = be(x, t)
        assert out1 is out2  # the same output array every step
        np.testing.assert_allclose(out2, be(x.copy(), t.copy()), atol=1e-6)
        # a non-contiguous or float64 input is copied into own buffers, not rejected
        out3 = be(np.asfortranarray(x.astype(np.float64)), t)
        np.testing.assert_allclose(out3, out2, atol=1e-6)


def test_no_allocation_per_step(tmp_path):
    """tracemalloc: the peak does not grow with the step count, and steps allocate no arrays."""
    spec = DiffusionSpec(ScheduleSpec(kind="linear", num_train_timesteps=1000), "epsilon", (2,),
                         clip=(-1.0, 1.0))
    src = make_source("swissroll", tmp_path / "mlp", spec=spec)
    batch = 2048  # one [B, 2] float32 buffer = 16 KiB: any per-step array would show
    x_init = initial_noise((batch, 2), np.random.default_rng(0))
    with open_for("ort", src, batch, ORT) as be:
        plans = {n: spec.plan(spec.sampler(n, sampler="ddpm")) for n in (10, 400)}
        for plan in plans.values():  # warm-up (ORT's python layer caches a few things once)
            be.sample(plan, x_init)
        peaks = {}
        for steps, plan in plans.items():
            tracemalloc.start()
            be.sample(plan, x_init, rng=np.random.default_rng(0))
            peaks[steps] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peaks[400] <= peaks[10] + 1024, peaks

        x, t = x_init.copy(), np.full(batch, 7.0, np.float32)
        be(x, t)  # binds x and t once
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(300):
            be(x, t)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak - base < x.nbytes // 4, (peak - base, x.nbytes)


def test_graph_cache_reused_then_rebuilt_when_onnx_changes(tmp_path):
    src = make_source("swissroll", tmp_path / "b", seed=0)
    x = initial_noise((4, 2), np.random.default_rng(0))
    t = np.full(4, 10.0, np.float32)
    with open_for("ort", src, 4, ORT) as be:
        assert be.info["graph_cache"] == "built"
        first_model = Path(be.info["model"])
        assert first_model.parent == tmp_path / "b" / ort_cache.CACHE_SUBDIR  # beside the bundle
        out_a = be(x, t).copy()
    mtime = first_model.stat().st_mtime_ns
    with open_for("ort", src, 4, ORT) as be:
        assert be.info["graph_cache"] == "hit" and Path(be.info["model"]) == first_model
    assert first_model.stat().st_mtime_ns == mtime  # reused, not rewritten

    # new weights in the same bundle: a new key; the old cached graph is never loaded
    src2 = make_source("swissroll", tmp_path / "b", seed=1)
    with torch.inference_mode():
        ref_b = src2.load_module()(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    with open_for("ort", src2, 4, ORT) as be:
        assert be.info["graph_cache"] == "built" and Path(be.info["model"]) != first_model
        out_b = be(x, t)
        assert np.max(np.abs(out_b - ref_b)) <= 1e-5
        assert np.max(np.abs(out_b - out_a)) > 1e-3


def test_graph_cache_tampered_or_half_written_entry_is_rebuilt(tmp_path):
    src = make_source("swissroll", tmp_path / "b")
    with open_for("ort", src, 2, ORT) as be:
        model = Path(be.info["model"])
    meta = model.with_suffix(".json")
    model.write_bytes(model.read_bytes()[:-16] + b"\0" * 16)  # same name, other content
    with open_for("ort", src, 2, ORT) as be:
        assert be.info["graph_cache"] == "built"
    meta.unlink()  # a crash between the two atomic writes leaves a model without meta
    with open_for("ort", src, 2, ORT) as be:
        assert be.info["graph_cache"] == "built"
    assert json.loads(meta.read_text())["fields"]["onnxruntime"]
    assert not list(model.parent.glob(".*tmp*")), "temporary files left behind"


def test_graph_cache_key_covers_provider_and_options(tmp_path):
    src = make_source("swissroll", tmp_path / "b")
    onnx = tmp_path / "b" / "denoiser.onnx"
    base = ort_cache.cache_entry(onnx, "CPUExecutionProvider")
    assert ort_cache.cache_entry(onnx, "CUDAExecutionProvider").key != base.key
    assert ort_cache.cache_entry(onnx, "CPUExecutionProvider", {"batch": 4}).key != base.key
    assert ort_cache.cache_entry(onnx, "CPUExecutionProvider").key == base.key
    assert set(base.fields) >= {"onnx_sha256", "onnxruntime", "provider", "level"}
    del src


def test_read_only_bundle_falls_back_to_user_cache(tmp_path, monkeypatch):
    src = make_source("swissroll", tmp_path / "ro")
    bundle_cache = tmp_path / "ro" / ort_cache.CACHE_SUBDIR
    real = ort_cache.writable_dir
    monkeypatch.setattr(ort_cache, "writable_dir", lambda p: p != bundle_cache and real(p))
    monkeypatch.setenv("DDPM_RT_CACHE", str(tmp_path / "user"))
    with open_for("ort", src, 2, ORT) as be:
        assert Path(be.info["model"]).parent == tmp_path / "user" / ort_cache.CACHE_SUBDIR
    # an explicit cache_dir wins over both
    with open_for("ort", src, 2, BackendOptions(threads=1, cache_dir=str(tmp_path / "x"))) as be:
        assert Path(be.info["model"]).parent == tmp_path / "x" / ort_cache.CACHE_SUBDIR


def test_session_settings_are_explicit(swissroll):
    with open_for("ort", swissroll, 2, BackendOptions(threads=2)) as be:
        assert be.info["intra_op_threads"] == 2 and be.info["inter_op_threads"] == 1
        assert be.info["providers"] == ["CPUExecutionProvider"]


def test_wrong_shape_and_precision_are_config_errors(swissroll):
    with open_for("ort", swissroll, 4, ORT) as be:
        with pytest.raises(ConfigError, match="opened for"):
            be(np.zeros((8, 2), np.float32), np.zeros(8, np.float32))  # batch above the maximum
        with pytest.raises(ConfigError, match="opened for"):
            be(np.zeros((4, 3), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ConfigError, match="fp32"):
        open_for("ort", swissroll, 4, BackendOptions(precision="fp16"))


def test_graph_with_other_io_names_is_a_bundle_error(tmp_path):
    torch.manual_seed(0)
    model = get_builtin("swissroll")
    path = write_manifest(export(model.build(), (2,), tmp_path / "bad", names=("sample", "timestep", "eps")),
                          model.spec)
    with pytest.raises(BundleError, match="contract is inputs"):
        open_backend("ort", load_bundle(path), 2, ORT)


def test_static_batch_graph_is_refused_with_the_batch_it_takes(tmp_path):
    torch.manual_seed(0)
    model = get_builtin("swissroll")
    path = tmp_path / "static"
    path.mkdir()
    torch.onnx.export(model.build().eval(), (torch.randn(1, 2), torch.full((1,), 3.0)), str(path / "denoiser.onnx"),
                      input_names=["x", "t"], output_names=["out"], opset_version=17, dynamo=False)
    bundle = load_bundle(write_manifest(path, model.spec))
    with pytest.raises(ConfigError, match="static batch of 1; use --batch 1"):
        open_backend("ort", bundle, 4, ORT)
    with open_backend("ort", bundle, 1, ORT) as be:
        assert be(np.zeros((1, 2), np.float32), np.ones(1, np.float32)).shape == (1, 2)


def test_missing_onnx_is_a_bundle_error(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    (path / "ddpm_rt.json").write_text('{"format": "ddpm-rt-bundle", "format_version": 1}')
    with pytest.raises(BundleError, match="missing its graph denoiser.onnx"):
        load_bundle(path)


def test_auto_picks_ort_without_cuda(swissroll):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() or torch.cuda.is_available():
        pytest.skip("a GPU runtime is present: auto may pick a device backend")
    assert choose_backend("auto", swissroll).name == "ort"


@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt"])
def test_gpu_backends_say_how_to_install(name, swissroll):
    import onnxruntime as ort

    from ddpm_rt.registry import unavailable_reason

    provider = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}[name]
    if provider in ort.get_available_providers():
        pytest.skip(f"{provider} is present")
    reason = unavailable_reason(name)
    assert reason and "pip install 'ddpm-rt[ort-gpu]'" in reason and "\n" not in reason
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        open_for(name, swissroll, 2, ORT)


def test_sample_loop_with_ort_matches_backend_sample(swissroll):
    """be.sample is the shared loop: driving sample_loop with the backend gives the same result."""
    plan = swissroll.spec.plan(swissroll.spec.sampler(12))
    x_init = initial_noise((16, 2), np.random.default_rng(4))
    noise = np.random.default_rng(5).standard_normal((12, 16, 2), dtype=np.float32)
    with open_for("ort", swissroll, 16, ORT) as be:
        a = be.sample(plan, x_init, noise=noise)
        b = sample_loop(be, plan, x_init, noise=noise)
    np.testing.assert_array_equal(a, b)
