"""torch-cuda: DeviceLoop on a CUDA device, with and without the whole-loop CUDA graph.

Skipped without CUDA. Written against torch's CUDA / CUDAGraph API; not run in this
project's CI or by its developers (no GPU was available), see docs/gpu.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_rt.gpu.device_loop import DeviceLoop
from ddpm_rt.runtime.loop import sample_loop
from tests.helpers.device_loop import (
    PLANS,
    SHAPE,
    TinyDenoiser,
    _device_denoise,
    _host_model,
    _plan,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def _no_tf32():
    # fp32 means fp32 for the parity checks
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _close(got: np.ndarray, ref: np.ndarray, tol: float) -> None:
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.all(np.isfinite(got))
    assert float(np.abs(got - ref).max()) <= tol * scale


@pytest.mark.parametrize("name", sorted(PLANS))
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_device_loop_on_cuda_matches_host_loop(name: str, cuda_graph: bool) -> None:
    module = TinyDenoiser().eval()
    plan = _plan(name)
    x_init = np.random.default_rng(1).standard_normal((4, *SHAPE), dtype=np.float32)
    ref = sample_loop(_host_model(module), plan, x_init, rng=np.random.default_rng(5))
    loop = DeviceLoop(_device_denoise(module.cuda()), "cuda", cuda_graph=cuda_graph)
    got = loop.sample(plan, x_init, rng=np.random.default_rng(5))
    _close(got, ref, 1e-4)
    assert loop.captures == int(cuda_graph)


def test_graph_is_captured_once_and_replayed() -> None:
    module = TinyDenoiser().eval().cuda()
    plan = _plan("ddpm-clip")
    graph_loop = DeviceLoop(_device_denoise(module), "cuda", cuda_graph=True)
    plain_loop = DeviceLoop(_device_denoise(module), "cuda", cuda_graph=False)
    rng = np.random.default_rng(0)
    for call in range(3):  # new x_init and noise each call: only copies + replay
        x_init = rng.standard_normal((2, *SHAPE), dtype=np.float32)
        noise = rng.standard_normal((plan.steps, 2, *SHAPE), dtype=np.float32)
        got = graph_loop.sample(plan, x_init, noise=noise)
        if call == 0:
            graph = graph_loop.state.graph
        assert graph_loop.state.graph is graph and graph_loop.state.replays == call + 1
        _close(got, plain_loop.sample(plan, x_init, noise=noise), 1e-5)
    graph_loop.sample(plan, rng.standard_normal((3, *SHAPE), dtype=np.float32))  # new batch
    assert graph_loop.state.graph is not graph and graph_loop.state.replays == 1


def test_rng_convention_matches_host_loop_on_cuda() -> None:
    module = TinyDenoiser().eval()
    plan = _plan("ddim-eta")
    x = np.zeros((2, *SHAPE), dtype=np.float32)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    sample_loop(_host_model(module), plan, x, rng=a)
    DeviceLoop(_device_denoise(module.cuda()), "cuda").sample(plan, x, rng=b)
    assert a.standard_normal() == b.standard_normal()


@pytest.mark.parametrize("cuda_graph", [True, False])
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 5e-2)])
def test_torch_cuda_backend_on_a_builtin(cuda_graph: bool, precision: str, tol: float) -> None:
    from ddpm_rt.commands.selfcheck import pinned_source
    from ddpm_rt.eager import TorchBackend
    from ddpm_rt.prepare import open_for
    from ddpm_rt.runtime.backend import BackendOptions
    from ddpm_rt.sources import resolve_source

    src = pinned_source(resolve_source("digits"))  # one set of weights for eager and torch-cuda
    plan = src.spec.plan(src.spec.sampler(20))
    x_init = np.random.default_rng(0).standard_normal((4, *src.spec.sample_shape), dtype=np.float32)
    noise = np.random.default_rng(1).standard_normal((plan.steps, *x_init.shape), dtype=np.float32)
    ref = TorchBackend(src.load_module()).sample(plan, x_init, noise=noise)
    opts = BackendOptions(precision=precision, cuda_graph=cuda_graph)
    with open_for("torch-cuda", src, 4, opts) as be:
        got = be.sample(plan, x_init, noise=noise)
        again = be.sample(plan, x_init, noise=noise)
    np.testing.assert_array_equal(got, again)  # a replay is deterministic
    _close(got, ref, tol)
