"""The device loop (run here on CPU torch tensors) runs classifier-free guidance, RePaint undo rows,
a noised start and inpainting exactly as the host loop does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_rt.conditioning import CondInput
from ddpm_rt.editing import make_edit
from ddpm_rt.errors import ConfigError
from ddpm_rt.gpu.device_loop import DeviceLoop
from ddpm_rt.plan import SamplerSpec, build_plan
from ddpm_rt.runtime.guidance import GuidedModel, make_guidance
from ddpm_rt.runtime.loop import sample_loop
from ddpm_rt.schedule import ScheduleSpec
from tests.helpers.device_loop import SHAPE, TinyConditional, device_call, host_call

LABELS = (CondInput("class_labels", "class", num_classes=3, null=3),)
LINEAR = ScheduleSpec(kind="linear", num_train_timesteps=1000)
B = 4


def _guidance(scale: float, mode: str, rescale: float = 0.0):
    return make_guidance(LABELS, {"class_labels": [0, 1, 2, 1]}, B, scale=scale, mode=mode, rescale=rescale)


@pytest.mark.parametrize("scale,mode,rescale", [(1.0, "batched", 0.0), (0.0, "batched", 0.0), (3.0, "batched", 0.0),
                                                (3.0, "split", 0.0), (2.5, "batched", 0.7), (2.5, "split", 0.7)])
@pytest.mark.parametrize("sampler", ["ddim", "unipc", "ddpm"])
def test_guided_device_loop_matches_the_host_loop(scale, mode, rescale, sampler):
    module = TinyConditional().eval()
    plan = build_plan(LINEAR, "epsilon", SamplerSpec(sampler, 12), (-1.0, 1.0))
    rng = np.random.default_rng(0)
    x_init = rng.standard_normal((B, *SHAPE), dtype=np.float32)
    noise = rng.standard_normal((plan.steps, B, *SHAPE), dtype=np.float32)
    g = _guidance(scale, mode, rescale)
    host = sample_loop(GuidedModel(host_call(module), g, B, SHAPE), plan, x_init, noise=noise)
    with torch.no_grad():
        dev = DeviceLoop(device_call(module), "cpu").sample(plan, x_init, noise=noise, guidance=g)
    np.testing.assert_allclose(dev, host, rtol=0, atol=2e-5)
    if scale not in (0.0, 1.0):  # guidance changes the result
        plain = sample_loop(GuidedModel(host_call(module), _guidance(1.0, mode), B, SHAPE), plan, x_init,
                            noise=noise)
        assert np.max(np.abs(plain - host)) > 1e-3


@pytest.mark.parametrize("spec", [SamplerSpec("ddim", 20, eta=1.0, repaint=(3, 2)),
                                  SamplerSpec("unipc", 15, start=5), SamplerSpec("ddim", 20, start=8)])
def test_edits_on_the_device_loop_match_the_host_loop(spec):
    module = TinyConditional().eval()
    plan = build_plan(LINEAR, "epsilon", spec, (-1.0, 1.0))
    rng = np.random.default_rng(1)
    image = rng.uniform(-1, 1, (B, *SHAPE)).astype(np.float32)
    mask = np.zeros((B, *SHAPE), bool)
    mask[..., :2] = True
    edit = make_edit(SHAPE, (-1.0, 1.0), B, image, mask)
    x_init = rng.standard_normal((B, *SHAPE), dtype=np.float32)
    noise = rng.standard_normal((plan.steps, B, *SHAPE), dtype=np.float32)
    g = _guidance(2.0, "batched")
    host = sample_loop(GuidedModel(host_call(module), g, B, SHAPE), plan, x_init, noise=noise, edit=edit)
    with torch.no_grad():
        dev = DeviceLoop(device_call(module), "cpu").sample(plan, x_init, noise=noise, guidance=g, edit=edit)
    np.testing.assert_allclose(dev, host, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(dev[mask], image[mask])  # the known region is the image


def test_classifier_guidance_is_refused_on_the_device_loop():
    g = make_guidance(LABELS, {"class_labels": 1}, B, classifier=lambda x, t, y: x, classifier_scale=1.0,
                      noise_std=np.ones(1000, np.float32))
    plan = build_plan(LINEAR, "epsilon", SamplerSpec("ddim", 5))
    with pytest.raises(ConfigError, match="classifier guidance runs on the host backends"):
        DeviceLoop(device_call(TinyConditional()), "cpu").sample(plan, np.zeros((B, *SHAPE), np.float32),
                                                                 guidance=g)
