"""DeviceLoop (the GPU backends' loop) on a CPU device equals the host loop step for step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_rt.errors import ConfigError
from ddpm_rt.gpu.device_loop import DeviceLoop
from ddpm_rt.runtime.loop import sample_loop
from tests.helpers.device_loop import (  # noqa: F401
    PLANS,
    SHAPE,
    TinyDenoiser,
    _device_denoise,
    _host_model,
    _plan,
)


@pytest.mark.parametrize("name", sorted(PLANS))
@pytest.mark.parametrize("noise_mode", ["rng", "array"])
def test_device_loop_matches_host_loop(name: str, noise_mode: str) -> None:
    torch.manual_seed(0)
    module = TinyDenoiser().eval()
    plan = _plan(name)
    batch = 3
    x_init = np.random.default_rng(1).standard_normal((batch, *SHAPE), dtype=np.float32)
    loop = DeviceLoop(_device_denoise(module), "cpu", cuda_graph=True)  # no capture on cpu
    if noise_mode == "rng":
        ref = sample_loop(_host_model(module), plan, x_init, rng=np.random.default_rng(7))
        got = loop.sample(plan, x_init, rng=np.random.default_rng(7))
    else:
        noise = np.random.default_rng(9).standard_normal((plan.steps, batch, *SHAPE), dtype=np.float32)
        ref = sample_loop(_host_model(module), plan, x_init, noise=noise)
        got = loop.sample(plan, x_init, noise=noise)
    assert got.shape == ref.shape and got.dtype == np.float32
    # 1e-5 absolute on unit-scale samples, 1e-5 relative where an untrained model drives x large
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert loop.captures == 0 and not loop.cuda_graph


def test_rng_draws_only_at_noisy_steps() -> None:
    # After the loop, both generators must be in the same state: same number of draws.
    module = TinyDenoiser().eval()
    plan = _plan("ddpm-clip")  # last step (train index 0) has sigma = 0
    assert plan.sigma[-1] == 0 and plan.stochastic
    x_init = np.zeros((2, *SHAPE), dtype=np.float32)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    sample_loop(_host_model(module), plan, x_init, rng=rng_a)
    DeviceLoop(_device_denoise(module), "cpu").sample(plan, x_init, rng=rng_b)
    assert rng_a.standard_normal() == rng_b.standard_normal()


def test_state_reused_and_rebuilt() -> None:
    module = TinyDenoiser().eval()
    loop = DeviceLoop(_device_denoise(module), "cpu")
    plan = _plan("ddim-eta")
    x1 = np.ones((2, *SHAPE), dtype=np.float32)
    a = loop.sample(plan, x1, rng=np.random.default_rng(0))
    st = loop.state
    b = loop.sample(plan, x1, rng=np.random.default_rng(0))
    assert loop.state is st  # same plan and batch: buffers reused
    np.testing.assert_array_equal(a, b)
    assert a is not b and not np.shares_memory(a, st.x.numpy())  # caller owns the result
    loop.sample(plan, np.ones((4, *SHAPE), dtype=np.float32), rng=np.random.default_rng(0))
    assert loop.state is not st  # new batch: new state
    st4 = loop.state
    loop.sample(_plan("ddim-det"), np.ones((4, *SHAPE), dtype=np.float32))
    assert loop.state is not st4  # new plan: new state


def test_noise_rows_skip_deterministic_steps() -> None:
    module = TinyDenoiser().eval()
    plan = _plan("ddim-det")  # eta = 0: no noise buffer at all
    loop = DeviceLoop(_device_denoise(module), "cpu")
    x = np.ones((2, *SHAPE), dtype=np.float32)
    loop.sample(plan, x)
    assert loop.state is not None and loop.state.z is None


def test_bad_noise_shape_is_config_error() -> None:
    module = TinyDenoiser().eval()
    plan = _plan("ddpm-clip")
    loop = DeviceLoop(_device_denoise(module), "cpu")
    x = np.ones((2, *SHAPE), dtype=np.float32)
    with pytest.raises(ConfigError, match="per-step noise must have shape"):
        loop.sample(plan, x, noise=np.zeros((plan.steps - 1, 2, *SHAPE), dtype=np.float32))
    with pytest.raises(ConfigError, match="batch axis"):
        loop.sample(plan, np.ones((3,), dtype=np.float32))


def test_progress_reports_every_step_without_graph() -> None:
    module = TinyDenoiser().eval()
    plan = _plan("ddim-det")
    seen: list[tuple[int, int]] = []
    DeviceLoop(_device_denoise(module), "cpu").sample(
        plan, np.ones((1, *SHAPE), dtype=np.float32), progress=lambda d, n: seen.append((d, n))
    )
    assert seen == [(i + 1, plan.steps) for i in range(plan.steps)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_cuda_device_without_cuda_is_backend_unavailable() -> None:
    from ddpm_rt.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        DeviceLoop(lambda x, t, out: None, "cuda")


def test_multistep_ring_is_zeroed_between_runs() -> None:
    """A second run on the same state (the ring holds the last run's outputs) gives the same sample."""
    module = TinyDenoiser().eval()
    plan = _plan("dpmpp-3m-karras")
    x_init = np.random.default_rng(2).standard_normal((2, *SHAPE), dtype=np.float32)
    loop = DeviceLoop(_device_denoise(module), "cpu")
    first = loop.sample(plan, x_init)
    assert loop.state is not None and loop.state.ring is not None and loop.state.ring.shape[0] == plan.depth + 1
    loop.state.ring.fill_(float("nan"))  # poison: a run that read unwritten slots unweighted-by-zero fails
    np.testing.assert_array_equal(loop.sample(plan, x_init), first)
    np.testing.assert_allclose(first, sample_loop(_host_model(module), plan, x_init), rtol=1e-5, atol=1e-5)
