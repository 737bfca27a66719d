"""ONNX Runtime on the GPU (CUDA EP and TensorRT EP, device-resident in DeviceLoop): skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu


def _needs(provider: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        provider not in ort.get_available_providers(),
        reason=f"{provider} not available (install onnxruntime-gpu on a CUDA machine)",
    )


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from tests.helpers.bundles import make_source

    return make_source("digits", tmp_path_factory.mktemp("digits"))


@pytest.mark.parametrize(
    ("name", "provider"),
    [
        pytest.param("ort-cuda", "CUDAExecutionProvider", marks=_needs("CUDAExecutionProvider")),
        pytest.param("ort-trt", "TensorrtExecutionProvider", marks=_needs("TensorrtExecutionProvider")),
    ],
)
def test_gpu_backend_matches_cpu_eager(digits, name, provider):
    from ddpm_rt.prepare import open_for
    from ddpm_rt.runtime.backend import BackendOptions
    from ddpm_rt.runtime.loop import initial_noise

    plan = digits.spec.plan(digits.spec.sampler(10))
    x_init = initial_noise((4, 1, 16, 16), np.random.default_rng(0))
    with open_for("torch", digits, 4, BackendOptions()) as be:
        ref = be.sample(plan, x_init)
    with open_for(name, digits, 4, BackendOptions()) as be:
        assert be.info["providers"][0] == provider and be.info["device_resident"]
        out = be.sample(plan, x_init)
        again = be.sample(plan, x_init)  # the same static buffers, bound once
    np.testing.assert_array_equal(out, again)
    assert np.max(np.abs(out - ref)) < 5e-3  # TF32 / cuDNN algorithms differ from CPU fp32
