"""Step-by-step parity of the multistep plans with diffusers and with a float64 iPNDM.

dpmpp-2m / dpmpp-3m are checked against DPMSolverMultistepScheduler (solver_order 2 / 3,
algorithm_type "dpmsolver++", with and without use_karras_sigmas) and unipc against
UniPCMultistepScheduler (bh2, order 2, corrector on), for every beta schedule × prediction
type × spacing at 5, 10, 20 and 50 steps, plus 1000 steps (trailing and Karras, one prediction
type per schedule, rotating). `sample_loop` is driven with a model that records the x it gets
and returns fixed outputs; diffusers is stepped over *our* x_i with the same output, so its
history (and UniPC's corrected last_sample) is built from the same inputs, and its result is
compared with our x_{i+1}: <= 1e-5 relative at every step.

Diffusers stores its noise levels in float32: we check that ours round to exactly its
values, then hand it ours in float64 (and a float64 alphas_cumprod before set_timesteps,
so that its Karras levels and timesteps are computed in float64 too), so the comparison
measures the step math, not table storage.

Deliberate differences, each with a test below:
* at 1000 of 1000 steps, linspace and leading spacing repeat a timestep in diffusers
  (leading: all are 0), a zero-length step its formulas divide by; we raise ConfigError.
* UniPC with lower_order_final=False takes order 2 on the last step, which lands on noise
  level 0 (h = inf) and returns non-finite values; we take order 1 there (as DPM-Solver++ does).
* diffusers finds its first step by looking the timestep up and, when it is repeated (cosine
  + Karras: 999 twice), starts at the second; we start at step 0, as diffusers does with
  set_begin_index(0), which the comparison uses.
Static clipping of x0^ to [-1, 1] is checked against diffusers' thresholding with
sample_max_value = 1, which is exactly that clip.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffusers")
import torch  # noqa: E402
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler  # noqa: E402

from ddpm_rt.errors import ConfigError  # noqa: E402
from ddpm_rt.plan import SamplerSpec, SamplingPlan, build_plan  # noqa: E402
from ddpm_rt.runtime.loop import sample_loop  # noqa: E402
from ddpm_rt.schedule import ScheduleSpec, alphas_cumprod  # noqa: E402

T = 1000
RTOL = 1e-5
SHAPE = (2, 3, 2)  # diffusers' thresholding needs (B, C, ...)
SCHEDULES = {
    "linear": (ScheduleSpec("linear"), {"beta_schedule": "linear"}),
    "scaled_linear": (ScheduleSpec("scaled_linear", beta_start=0.00085, beta_end=0.012),
                      {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
    "cosine": (ScheduleSpec("cosine"), {"beta_schedule": "squaredcos_cap_v2"}),
}
PREDICTIONS = ("epsilon", "sample", "v_prediction")
SOLVERS = {  # our sampler -> diffusers scheduler and its settings
    "dpmpp-2m": (DPMSolverMultistepScheduler, {"solver_order": 2, "algorithm_type": "dpmsolver++"}),
    "dpmpp-3m": (DPMSolverMultistepScheduler, {"solver_order": 3, "algorithm_type": "dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, {"solver_order": 2, "solver_type": "bh2"}),
}
SPACINGS = ("linspace", "leading", "trailing", "karras")  # karras: Karras levels (spacing unused)
STEPS = (5, 10, 20, 50)


def _spec(sampler: str, steps: int, spacing: str, **kw) -> SamplerSpec:
    karras = spacing == "karras"
    return SamplerSpec(sampler, steps, "trailing" if karras else spacing, karras_sigmas=karras, **kw)


def _diffusers(sampler: str, schedule: str, prediction: str, spec: SamplerSpec, clip: bool = False,
               begin: bool = True):
    cls, config = SOLVERS[sampler]
    if clip:  # dynamic thresholding clamped to [1, 1]: a static clip of x0^ to [-1, 1]
        config = {**config, "thresholding": True, "sample_max_value": 1.0}
    sched = cls(num_train_timesteps=T, timestep_spacing=spec.spacing, prediction_type=prediction,
                use_karras_sigmas=spec.karras_sigmas, lower_order_final=spec.lower_order_final,
                **SCHEDULES[schedule][1], **config)
    sched.alphas_cumprod = torch.from_numpy(alphas_cumprod(SCHEDULES[schedule][0]))  # float64
    sched.set_timesteps(spec.steps)
    if begin:
        sched.set_begin_index(spec.start)  # img2img: diffusers' pipelines set the first step run
    return sched


def _trajectory(plan: SamplingPlan, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x_0..x_N as handed to the model, then the result; the outputs), float32."""
    r = np.random.default_rng(seed)
    x_T = r.standard_normal(SHAPE, dtype=np.float32)
    outs = r.standard_normal((plan.steps, *SHAPE), dtype=np.float32)
    xs: list[np.ndarray] = []

    def model(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        assert np.all(t == plan.train_timesteps[len(xs)])
        xs.append(x.copy())
        return outs[len(xs) - 1]

    final = sample_loop(model, plan, x_T)
    return np.stack([*xs, final]), outs


def _check(sampler: str, schedule: str, prediction: str, spec: SamplerSpec, clip: bool = False) -> None:
    sched = _diffusers(sampler, schedule, prediction, spec, clip)
    plan = build_plan(SCHEDULES[schedule][0], prediction, spec, (-1.0, 1.0) if clip else None)
    run = sched.timesteps[spec.start:]  # img2img: the last N - start timesteps (order-1 solvers)
    np.testing.assert_array_equal(plan.train_timesteps, run.numpy())
    levels = plan.meta["noise_levels"]  # float64 [N + 1]
    np.testing.assert_array_equal(levels.astype(np.float32), sched.sigmas.numpy())
    sched.sigmas = torch.from_numpy(levels)
    traj, outs = _trajectory(plan, seed=spec.steps)
    for i, t in enumerate(run):
        ref = sched.step(torch.from_numpy(outs[i].astype(np.float64)), t,
                         torch.from_numpy(traj[i].astype(np.float64)), return_dict=False)[0].numpy()
        err = np.max(np.abs(traj[i + 1] - ref)) / np.max(np.abs(ref))
        assert err <= RTOL, f"{sampler} {spec}: step {i} (t={int(t)}) rel err {err:.2e}"


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("sampler", SOLVERS)
def test_img2img_start_warms_up_like_diffusers(sampler: str, spacing: str) -> None:
    """A plan that starts mid-schedule equals diffusers after set_begin_index(start): the solver warms
    up from the first step run (lower orders first); the final-step rules follow the full N."""
    for steps, start in ((10, 3), (10, 9), (20, 1), (20, 12), (50, 35)):
        for prediction in PREDICTIONS:
            _check(sampler, "linear", prediction, _spec(sampler, steps, spacing, start=start))
    _check(sampler, "linear", "epsilon", _spec(sampler, 20, spacing, start=6), clip=True)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sampler", SOLVERS)
def test_per_step_parity_with_diffusers(sampler: str, schedule: str, prediction: str, spacing: str) -> None:
    for steps in STEPS:
        _check(sampler, schedule, prediction, _spec(sampler, steps, spacing))


@pytest.mark.parametrize("spacing", ["trailing", "karras"])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sampler", SOLVERS)
def test_per_step_parity_at_1000_steps(sampler: str, schedule: str, spacing: str) -> None:
    # one prediction type per case, rotating, keeps 18 runs of 1000 diffusers steps (~4 s)
    k = list(SOLVERS).index(sampler) + list(SCHEDULES).index(schedule) + SPACINGS.index(spacing)
    _check(sampler, schedule, PREDICTIONS[k % 3], _spec(sampler, T, spacing))


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("sampler", SOLVERS)
def test_clip_matches_unit_thresholding(sampler: str, prediction: str) -> None:
    for steps, spacing in ((5, "trailing"), (20, "linspace"), (10, "karras")):
        _check(sampler, "cosine", prediction, _spec(sampler, steps, spacing), clip=True)


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "dpmpp-3m"])
def test_lower_order_final_off(sampler: str) -> None:
    for steps in (5, 10):
        _check(sampler, "linear", "epsilon", _spec(sampler, steps, "linspace", lower_order_final=False))


# --- deliberate differences ---------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_repeated_timesteps_at_full_length_raise(spacing: str) -> None:
    sched = _diffusers("dpmpp-2m", "linear", "epsilon", SamplerSpec("dpmpp-2m", T, spacing))
    ts = sched.timesteps.numpy()
    assert len(np.unique(ts)) < T  # diffusers repeats a timestep: a zero-length step
    with pytest.raises(ConfigError, match=f"{spacing} spacing repeats a timestep at 1000 of 1000 steps"):
        build_plan(SCHEDULES["linear"][0], "epsilon", SamplerSpec("dpmpp-2m", T, spacing))


def test_unipc_last_step_is_first_order_without_lower_order_final() -> None:
    spec = _spec("unipc", 10, "trailing", lower_order_final=False)
    sched = _diffusers("unipc", "linear", "epsilon", spec)
    plan = build_plan(SCHEDULES["linear"][0], "epsilon", spec)
    assert plan.meta["orders"][-1] == 1
    traj, outs = _trajectory(plan, seed=1)
    for i, t in enumerate(sched.timesteps):
        ref = sched.step(torch.from_numpy(outs[i].astype(np.float64)), t,
                         torch.from_numpy(traj[i].astype(np.float64)), return_dict=False)[0].numpy()
    assert not np.all(np.isfinite(ref))  # diffusers: order 2 into noise level 0
    # ours lands on x0^ of the last output (order 1 at s = 0: x_N = d_{N-1}, epsilon prediction)
    ac = alphas_cumprod(SCHEDULES["linear"][0])[plan.train_timesteps[-1]]
    x0 = (traj[-2].astype(np.float64) - np.sqrt(1 - ac) * outs[-1]) / np.sqrt(ac)
    np.testing.assert_allclose(traj[-1], x0, rtol=1e-5, atol=1e-5 * np.abs(x0).max())


def test_diffusers_skips_a_repeated_first_timestep_without_begin_index() -> None:
    spec = _spec("unipc", 20, "karras")
    plan = build_plan(SCHEDULES["cosine"][0], "epsilon", spec)
    sched = _diffusers("unipc", "cosine", "epsilon", spec, begin=False)
    assert list(plan.train_timesteps[:2]) == [999, 999]
    x = torch.zeros(SHAPE, dtype=torch.float64)
    sched.step(x, sched.timesteps[0], x)
    assert sched.step_index == 2  # looked up 999, started at its second occurrence, stepped once


# --- iPNDM --------------------------------------------------------------------------------


def _ipndm_reference(levels: np.ndarray, prediction: str, xs: np.ndarray, outs: np.ndarray) -> np.ndarray:
    """k-diffusion's sample_ipndm (Zhang & Chen 2023 §4) in float64, one step per row of `xs`.

    In the noise-level form x/alpha = x0 + s·eps: d = eps^, x_next = x + (s' - s)·AB(d, history),
    where AB is Adams–Bashforth of order min(4, i + 1).
    """
    out = []
    buffer: list[np.ndarray] = []
    for i in range(len(outs)):
        s, s_next = levels[i], levels[i + 1]
        alpha, alpha_next = 1 / np.sqrt(1 + s**2), 1 / np.sqrt(1 + s_next**2)
        x_vp, o = xs[i].astype(np.float64), outs[i].astype(np.float64)
        sigma = s * alpha
        if prediction == "epsilon":
            eps = o
        elif prediction == "sample":
            eps = (x_vp - alpha * o) / sigma
        else:
            eps = alpha * o + sigma * x_vp
        x_cur = x_vp / alpha  # the k-diffusion (VE) variable
        order = min(4, i + 1)
        if order == 1:
            x_next = x_cur + (s_next - s) * eps
        elif order == 2:
            x_next = x_cur + (s_next - s) * (3 * eps - buffer[-1]) / 2
        elif order == 3:
            x_next = x_cur + (s_next - s) * (23 * eps - 16 * buffer[-1] + 5 * buffer[-2]) / 12
        else:
            x_next = x_cur + (s_next - s) * (55 * eps - 59 * buffer[-1] + 37 * buffer[-2] - 9 * buffer[-3]) / 24
        if len(buffer) == 3:
            buffer = buffer[1:]
        buffer.append(eps)
        out.append(alpha_next * x_next)
    return np.stack(out)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ipndm_matches_its_published_update(schedule: str, prediction: str, spacing: str) -> None:
    for steps in (*STEPS, *((T,) if spacing in ("trailing", "karras") else ())):
        spec = _spec("ipndm", steps, spacing)
        plan = build_plan(SCHEDULES[schedule][0], prediction, spec)
        # the same timesteps and noise levels as diffusers' UniPC (Karras timesteps rounded)
        uni = _diffusers("unipc", schedule, prediction, _spec("unipc", steps, spacing))
        np.testing.assert_array_equal(plan.train_timesteps, uni.timesteps.numpy())
        np.testing.assert_array_equal(plan.meta["noise_levels"].astype(np.float32), uni.sigmas.numpy())
        traj, outs = _trajectory(plan, seed=steps + 2)
        ref = _ipndm_reference(plan.meta["noise_levels"], prediction, traj[:-1], outs)
        err = np.max(np.abs(traj[1:] - ref), axis=(1, 2, 3)) / np.max(np.abs(ref), axis=(1, 2, 3))
        assert err.max() <= RTOL, f"{spec}: step {err.argmax()} rel err {err.max():.2e}"


def test_ipndm_refuses_clip() -> None:
    with pytest.raises(ConfigError, match=r"ipndm steps on eps\^ and cannot clip x0\^, but this model clips x0\^ to \[-1, 1\]"):
        build_plan(SCHEDULES["linear"][0], "epsilon", SamplerSpec("ipndm", 10), (-1.0, 1.0))


def test_karras_needs_a_multistep_sampler() -> None:
    with pytest.raises(ConfigError, match="Karras noise levels need a multistep sampler"):
        build_plan(SCHEDULES["linear"][0], "epsilon", SamplerSpec("ddim", 10, karras_sigmas=True))
