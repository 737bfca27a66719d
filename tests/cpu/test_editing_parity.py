"""Editing plans against diffusers: the img2img strength cut, the noised start, RePaint's schedule
and every RePaint row (step and undo), and inpainting keeping the known region exactly.

Named differences, each tested here:
* a strength whose int(N·s) is 0 runs no step in diffusers' img2img pipelines (an empty loop that
  returns the noised image, or an error in newer versions); we refuse it in one line.
* diffusers' RePaint undo_step draws T // N noises in a row; an undo row draws one, with the same
  mean coefficient sqrt(prod(1 - beta)) and total variance 1 - prod(1 - beta) (checked exactly).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("diffusers")
import torch  # noqa: E402
from diffusers import DDIMScheduler, DDPMScheduler, RePaintScheduler  # noqa: E402

from ddpm_rt.editing import Edit, make_edit, start_for_strength  # noqa: E402
from ddpm_rt.errors import ConfigError  # noqa: E402
from ddpm_rt.plan import SamplerSpec, build_plan  # noqa: E402
from ddpm_rt.runtime.loop import sample_loop  # noqa: E402
from ddpm_rt.schedule import ScheduleSpec, alphas_cumprod  # noqa: E402

T = 1000
LINEAR = ScheduleSpec("linear")
SHAPE = (2, 1, 4, 4)


def _img2img_timesteps(sched, steps: int, strength: float) -> np.ndarray:
    """diffusers' StableDiffusionImg2ImgPipeline.get_timesteps, verbatim in effect."""
    sched.set_timesteps(steps)
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    return sched.timesteps[t_start * sched.order:].numpy()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("sampler,cls", [("ddim", DDIMScheduler), ("ddpm", DDPMScheduler)])
def test_strength_cut_equals_diffusers_img2img(sampler, cls, spacing):
    sched = cls(num_train_timesteps=T, timestep_spacing=spacing)
    for steps, strength in ((50, 0.6), (50, 1.0), (50, 0.02), (10, 0.35), (10, 0.99), (7, 0.5), (1000, 0.3)):
        want = _img2img_timesteps(sched, steps, strength)
        start = start_for_strength(steps, strength)
        plan = build_plan(LINEAR, "epsilon", SamplerSpec(sampler, steps, spacing, start=start))
        np.testing.assert_array_equal(plan.train_timesteps, want, err_msg=f"{steps} steps, strength {strength}")
        full = build_plan(LINEAR, "epsilon", SamplerSpec(sampler, steps, spacing))
        for column in ("a", "b", "sigma", "kx", "kn"):  # single-step rows do not depend on the start
            got = getattr(plan, column)[:-1] if column in ("kx", "kn") else getattr(plan, column)
            ref = getattr(full, column)[start:][: got.shape[0]]
            np.testing.assert_array_equal(got, ref)


def test_strength_that_runs_no_step_is_refused():
    sched = DDIMScheduler(num_train_timesteps=T)
    assert _img2img_timesteps(sched, 10, 0.05).size == 0  # diffusers: an empty loop
    with pytest.raises(ConfigError, match=r"runs no step.*raise the strength to >= 0\.1"):
        start_for_strength(10, 0.05)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"--strength must be in \(0, 1\]"):
            start_for_strength(10, bad)
    with pytest.raises(ConfigError, match="would run no step"):
        SamplerSpec("ddim", 10, start=10)


def test_noised_start_is_diffusers_add_noise():
    sched = DDIMScheduler(num_train_timesteps=T)
    sched.alphas_cumprod = torch.from_numpy(alphas_cumprod(LINEAR))
    start = start_for_strength(50, 0.6)
    plan = build_plan(LINEAR, "epsilon", SamplerSpec("ddim", 50, start=start))
    r = np.random.default_rng(0)
    image = r.uniform(-1, 1, SHAPE).astype(np.float32)
    z = r.standard_normal(SHAPE, dtype=np.float32)
    seen = []
    sample_loop(lambda x, t: seen.append(x.copy()) or np.zeros_like(x), plan.head(1), z, edit=Edit(image))
    want = sched.add_noise(torch.from_numpy(image).double(), torch.from_numpy(z).double(),
                           torch.tensor([int(plan.train_timesteps[0])])).numpy()
    np.testing.assert_allclose(seen[0], want, rtol=0, atol=2e-6)


def _repaint(steps: int, jump: int, resample: int, eta: float, clip: bool) -> tuple[RePaintScheduler, object]:
    sched = RePaintScheduler(num_train_timesteps=T, eta=eta, clip_sample=clip)
    ac = alphas_cumprod(LINEAR)
    sched.alphas_cumprod = torch.from_numpy(ac)  # float64, as ours
    sched.betas = torch.from_numpy(1.0 - ac / np.concatenate([[1.0], ac[:-1]]))
    sched.set_timesteps(steps, jump_length=jump, jump_n_sample=resample)
    spec = SamplerSpec("ddim", steps, eta=eta, repaint=(jump, resample))
    return sched, build_plan(LINEAR, "epsilon", spec, (-1.0, 1.0) if clip else None)


@pytest.mark.parametrize("steps,jump,resample", [(20, 3, 2), (25, 5, 3), (50, 10, 10), (250, 10, 10)])
def test_repaint_schedule_equals_diffusers(steps, jump, resample):
    sched, plan = _repaint(steps, jump, resample, 0.0, True)
    ts = sched.timesteps.numpy()
    assert plan.steps == len(ts)
    last = ts[0] + 1
    for i, t in enumerate(ts):  # RePaintPipeline: a step where t < t_last, else undo_step(t_last)
        assert plan.calls[i] == (1 if t < last else 0), i
        assert plan.train_timesteps[i] == (t if t < last else last), i
        last = t
    assert plan.model_calls == int(np.sum(np.diff(np.r_[ts[0] + 1, ts]) < 0))


@pytest.mark.parametrize("eta,clip", [(0.0, True), (1.0, True), (0.5, False)])
def test_every_repaint_row_equals_diffusers(eta, clip, monkeypatch):
    import diffusers.schedulers.scheduling_repaint as repaint_module

    sched, plan = _repaint(20, 3, 2, eta, clip)
    r = np.random.default_rng(1)
    original = r.uniform(-1, 1, SHAPE).astype(np.float32)
    mask = r.uniform(size=SHAPE) < 0.5  # True = known
    drawn: list[torch.Tensor] = []
    monkeypatch.setattr(repaint_module, "randn_tensor", lambda shape, **kw: drawn.pop(0))
    ts = sched.timesteps
    for i in range(plan.steps):
        x = r.standard_normal(SHAPE, dtype=np.float32)
        out = r.standard_normal(SHAPE, dtype=np.float32)
        z = r.standard_normal(SHAPE, dtype=np.float32)
        row = replace(plan.rows(i, i + 1), qx=np.zeros(1, np.float32), qn=np.ones(1, np.float32))  # x_start = x
        got = sample_loop(lambda x, t, out=out: out, row, x, noise=z[None], edit=Edit(original, mask))
        if plan.calls[i]:
            drawn[:] = [torch.from_numpy(z).double()]
            want = sched.step(torch.from_numpy(out).double(), int(ts[i]), torch.from_numpy(x).double(),
                              torch.from_numpy(original).double(), torch.from_numpy(mask).double()).prev_sample
            want = want.numpy()
        else:  # diffusers draws T // N noises; with all of them 0 its mean coefficient shows
            drawn[:] = [torch.zeros(SHAPE, dtype=torch.float64) for _ in range(T // 20)]
            mean = sched.undo_step(torch.from_numpy(x).double(), int(plan.train_timesteps[i])).numpy()
            np.testing.assert_allclose(plan.a[i] * x, mean, rtol=1e-6, atol=1e-7)
            assert abs(float(plan.a[i]) ** 2 + float(plan.sigma[i]) ** 2 - 1.0) < 1e-6  # variance-exact
            want = mean + plan.sigma[i] * z
        err = np.max(np.abs(got - want)) / np.max(np.abs(want))
        assert err <= 1e-5, f"row {i} (calls {plan.calls[i]}, t {plan.train_timesteps[i]}): rel err {err:.2e}"


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "unipc", "dpmpp-2m"])
def test_inpainting_keeps_the_known_region_exactly(sampler):
    plan = build_plan(LINEAR, "epsilon", SamplerSpec(sampler, 20), (-1.0, 1.0))
    r = np.random.default_rng(2)
    image = r.uniform(-1, 1, SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[..., :2] = True  # the left half is known
    edit = make_edit(SHAPE[1:], (-1.0, 1.0), SHAPE[0], image, mask)
    x = sample_loop(lambda x, t: np.tanh(x), plan, r.standard_normal(SHAPE, dtype=np.float32),
                    rng=np.random.default_rng(3), edit=edit)
    assert np.max(np.abs(x[mask] - image[mask])) <= 1e-6
    assert np.max(np.abs(x[~mask] - image[~mask])) > 0.1  # the rest was generated


def test_repaint_refuses_what_it_cannot_run():
    with pytest.raises(ConfigError, match="RePaint resampling runs on the ddim update"):
        SamplerSpec("unipc", 20, repaint=(3, 2))
    with pytest.raises(ConfigError, match="jump length >= 1"):
        SamplerSpec("ddim", 20, repaint=(0, 2))
    with pytest.raises(ConfigError, match="drop --strength"):
        SamplerSpec("ddim", 20, start=3, repaint=(3, 2))
