"""Classifier-free guidance end to end against diffusers: a class-conditional `UNet2DModel` folder
exported by ddpm-rt and sampled with CFG on ONNX Runtime equals a loop written the way diffusers'
pipelines do CFG — ``torch.cat([x, x])``, labels ``cat([cond, null])``, the eager model, diffusers'
own scheduler, ``uncond + w·(cond − uncond)`` — to <= 1e-4 max-abs, for DDIM and DPM-Solver++ (2M)
at w = 0, 1 and 4 (the CFG halves run as one 2B call and as two B calls).

The weights are random (parity needs no training); the class table is scaled up so a wrong or
swapped label would show (asserted: the guided samples differ per w and from the unguided ones).
Measured: max-abs 2e-5 (DDIM, w = 4) and 9e-6 (DPM-Solver++, w = 4) against diffusers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
import torch  # noqa: E402
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler  # noqa: E402

from ddpm_rt.exporter.export import ExportOptions, export_bundle  # noqa: E402
from ddpm_rt.runtime.loop import initial_noise  # noqa: E402
from ddpm_rt.sampling import open_run  # noqa: E402
from ddpm_rt.sources import resolve_export_source, resolve_source  # noqa: E402
from ddpm_rt.sources.diffusers import load_unet  # noqa: E402
from ddpm_rt.sources.flags import ScheduleFlags  # noqa: E402
from tests.helpers.bundles import make_class_unet  # noqa: E402

NUM_CLASS_EMBEDS, NULL = 5, 4  # 4 classes + the null row, as a CFG-trained table is laid out
STEPS = 8
LABELS = np.array([0, 3, 1], np.int64)
TOL = 1e-4
# Our sampler -> diffusers' scheduler with the same settings. x0^ is clipped to [-1, 1] (--clip 1;
# DPM-Solver++: diffusers' thresholding with sample_max_value 1 is exactly that clip): a random
# model's unclipped samples reach |x| ~ 200, where float32 rounding alone is ~1e-5.
SCHEDULERS = {
    "ddim": lambda: DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                                  clip_sample_range=1.0, set_alpha_to_one=True, timestep_spacing="leading"),
    "dpmpp-2m": lambda: DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                                    algorithm_type="dpmsolver++", solver_order=2,
                                                    thresholding=True, sample_max_value=1.0,
                                                    timestep_spacing="leading"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    root = tmp_path_factory.mktemp("cfg")
    # out_scale 0.1: a random net at full gain makes the 8-step trajectory chaotic (measured: 1e-6
    # per-call ORT-vs-eager differences grow to 5e-4 at w = 4 under DDIM, in eager vs eager too)
    folder = make_class_unet(root, None, NUM_CLASS_EMBEDS, out_scale=0.1, block_out_channels=(8, 16),
                             down_block_types=("DownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "UpBlock2D"))
    src = resolve_export_source(str(folder), flags=ScheduleFlags(clip="1"), null_label=NULL)
    export_bundle(src, root / "bundle", ExportOptions(trajectory_steps=0), status=lambda _: None)
    return load_unet(folder, allow_pickle=False), root / "bundle"


def _diffusers_cfg(unet: torch.nn.Module, sampler: str, w: float, x_T: np.ndarray) -> np.ndarray:
    """A diffusers-pipeline-style CFG loop (eager UNet2DModel, diffusers' scheduler)."""
    sched = SCHEDULERS[sampler]()
    sched.set_timesteps(STEPS)
    x = torch.from_numpy(x_T)
    labels = torch.from_numpy(LABELS)
    both = torch.cat([labels, torch.full_like(labels, NULL)])
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(torch.cat([x, x]), t, class_labels=both).sample
            cond, uncond = out.chunk(2)
            eps = uncond + w * (cond - uncond)
            x = sched.step(eps, t, x).prev_sample
    return x.numpy()


@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_cfg_equals_a_diffusers_pipeline_loop(exported, sampler: str) -> None:
    unet, bundle = exported
    src = resolve_source(str(bundle))
    cond = src.spec.conditioning[0]
    assert (cond.name, cond.num_classes, cond.null) == ("class_labels", NULL, NULL)
    plan = src.spec.plan(src.spec.sampler(STEPS, sampler=sampler))
    x_T = initial_noise((len(LABELS), *src.spec.sample_shape), np.random.default_rng(0))
    results = {}
    for w, modes in ((0.0, ("batched",)), (1.0, ("batched",)), (4.0, ("batched", "split"))):
        want = _diffusers_cfg(unet, sampler, w, x_T)
        for mode in modes:
            with open_run(src, "ort", chunk=len(LABELS), threads=1, cond={"class_labels": LABELS},
                          guidance_scale=w, guidance_mode=mode) as run:
                got = run.sample(plan, x_T.copy())
            err = float(np.max(np.abs(got - want)))
            assert err <= TOL, f"{sampler} w={w} {mode}: max-abs {err:.3g} vs diffusers"
        results[w] = got
    # the labels and the scale matter (a graph that ignored them would pass the comparisons above trivially)
    assert np.max(np.abs(results[4.0] - results[1.0])) > 1e-2
    assert np.max(np.abs(results[1.0] - results[0.0])) > 1e-2
