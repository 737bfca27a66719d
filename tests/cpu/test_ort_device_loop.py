"""The device-resident ONNX Runtime backends (ort-cuda, ort-trt) run their session inside DeviceLoop,
bound to the loop's own tensors by pointer. On the CPU the same code runs with CPU tensors and the
CPU execution provider: it must agree with the host loop and bind once per buffer set."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from ddpm_rt.bundle.load import load_bundle  # noqa: E402
from ddpm_rt.gpu.ort_gpu import OrtDeviceBackend  # noqa: E402
from ddpm_rt.models.catalog import shipped_bundle  # noqa: E402
from ddpm_rt.registry import open_backend  # noqa: E402
from ddpm_rt.runtime.backend import BackendOptions  # noqa: E402
from ddpm_rt.runtime.loop import initial_noise  # noqa: E402

OPTS = BackendOptions(threads=1, extra={"graph_cache": False})


@pytest.mark.parametrize(("model", "sampler", "steps"), [("swissroll", "ddpm", 40), ("digits", "ddim", 10)])
def test_device_resident_ort_matches_the_host_loop(model: str, sampler: str, steps: int) -> None:
    bundle = load_bundle(shipped_bundle(model))
    plan = bundle.spec.plan(bundle.spec.sampler(steps, sampler=sampler))
    rng = np.random.default_rng(0)
    x = initial_noise((4, *bundle.spec.sample_shape), rng)
    noise = rng.standard_normal((plan.steps, *x.shape), dtype=np.float32)
    with open_backend("ort", bundle, 4, OPTS) as host:
        ref = host.sample(plan, x, noise=noise)
    dev = OrtDeviceBackend(bundle, 4, OPTS, device="cpu")
    bound = []
    real = dev._binding.bind_output
    dev._binding.bind_output = lambda *a: (bound.append(a), real(*a))[1]
    got = dev.sample(plan, x, noise=noise)
    again = dev.sample(plan, x, noise=noise)
    dev.close()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(again, got)
    assert len(bound) == 1  # the loop's buffers are static: bound once, then only run


def test_tensorrt_ep_engine_writes_are_serialised_and_a_damaged_cache_is_discarded(tmp_path) -> None:
    """ORT's TensorRT EP writes its engine itself while a session opens: ddpm-rt holds a per-engine
    file lock around the opening (a second process waits), and removes the EP's own cache once
    when opening fails (a killed writer's half-written engine). The GPU opening itself is untested
    here (no GPU); the lock and the discard are."""
    import fcntl
    import os

    from ddpm_rt.gpu.ort_gpu import OrtTensorRTBackend

    bundle = load_bundle(shipped_bundle("digits"))
    options = BackendOptions(cache_dir=str(tmp_path), precision="fp16")
    engines = OrtTensorRTBackend._engine_dir(bundle, 4, options)
    assert OrtTensorRTBackend._engine_dir(bundle, 8, options) != engines  # keyed by the batch profile
    with OrtTensorRTBackend.session_lock(bundle, 4, options):
        fd = os.open(engines.with_suffix(".lock"), os.O_RDWR)
        with pytest.raises(BlockingIOError):  # what another process would meet: it waits
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    assert not OrtTensorRTBackend.discard_own_cache(bundle, 4, options)  # nothing written yet
    engines.mkdir(parents=True)
    (engines / "model.engine").write_bytes(b"half an eng")
    assert OrtTensorRTBackend.discard_own_cache(bundle, 4, options) and not engines.exists()
