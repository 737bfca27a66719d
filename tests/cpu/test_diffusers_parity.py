"""Step-by-step parity of our DDPM/DDIM plans with diffusers' DDPMScheduler and DDIMScheduler.

`sample_loop` is driven with a model callable that records the x it receives at each step
and returns a fixed output. For step i, diffusers' step is then computed in float64 from
that same x_i, model output and noise row, and compared with x_{i+1} (the x handed to the
model at the next step, or the final result). Comparing per step keeps float32 error from
accumulating over 1000 steps into the comparison.
Every step is checked for N <= 50. At N = 1000 every 4th step is checked, plus the first and
last four, with the phase rotating across cases so that together they check every timestep:
a diffusers step costs ~0.15 ms and the matrix has 243 cases of that length.

Diffusers stores its schedule tables in float32; we check those against our betas at
float32 precision, then give the scheduler the same betas in float64 so the per-step
comparison measures the step math, not table storage.

Known differences:
* DDIMScheduler takes prev_t = t - T//N, which is wrong when the kept timesteps are not
  evenly spaced by T//N (linspace spacing, and trailing when N does not divide T). We take
  the previous timestep from the timestep list; there we compare with a float64
  transcription of DDIM eq. 12 over the same list and assert that diffusers differs.
* variance_type "fixed_large_log" (diffusers takes sqrt of a log), "learned" and
  "learned_range" are not supported: they raise ConfigError.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("diffusers")
import torch  # noqa: E402
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402
from diffusers.schedulers import scheduling_ddpm  # noqa: E402

from ddpm_rt.errors import ConfigError  # noqa: E402
from ddpm_rt.plan import SamplerSpec, SamplingPlan, build_plan  # noqa: E402
from ddpm_rt.runtime.loop import sample_loop  # noqa: E402
from ddpm_rt.schedule import ScheduleSpec, make_betas  # noqa: E402

T = 1000
RTOL = 1e-5  # per step: max |ours - reference| / max |reference|
SHAPE = (2, 3)

# our schedule -> (ScheduleSpec, diffusers beta_schedule and its arguments)
SCHEDULES = {
    "linear": (ScheduleSpec("linear"), {"beta_schedule": "linear"}),
    "scaled_linear": (ScheduleSpec("scaled_linear", beta_start=0.00085, beta_end=0.012),
                      {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
    "cosine": (ScheduleSpec("cosine"), {"beta_schedule": "squaredcos_cap_v2"}),
}
PREDICTIONS = ("epsilon", "sample", "v_prediction")
VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large")
CLIPS = (None, 1.0, 2.5)  # clip_sample off, or on with this clip_sample_range


def _timestep_cases() -> list[tuple[int, str, int]]:
    """(steps, spacing, steps_offset). At N = T every spacing keeps 999..0 (asserted in
    test_full_length_spacings_agree), so that length runs once; leading + offset 1 cannot
    run at N = T (timestep 1000 does not exist: test_offset_past_the_end_raises)."""
    cases = [(n, sp, off) for n in (1, 7, 10, 50)
             for sp, off in (("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0))]
    return [*cases, (T, "leading", 0)]


CASES = _timestep_cases()
CASE_IDS = [f"{n}-{sp}{off or ''}" for n, sp, off in CASES]


@functools.cache
def _betas(schedule: str) -> torch.Tensor:
    return torch.from_numpy(make_betas(SCHEDULES[schedule][0]))


def _diffusers(cls, schedule: str, steps: int, spacing: str, offset: int, **config):
    """A diffusers scheduler for our `schedule`, switched to float64 tables.

    Its own float32 betas are checked against ours in test_same_betas_and_alphas_cumprod.
    """
    sched = cls(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset,
                **SCHEDULES[schedule][1], **config)
    sched.betas = _betas(schedule)
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    if cls is DDIMScheduler:  # as DDIMScheduler.__init__ sets it, from the float64 table
        sched.final_alpha_cumprod = sched.one if config["set_alpha_to_one"] else sched.alphas_cumprod[0]
    sched.set_timesteps(steps)
    return sched


def _data(steps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x_T, one model output per step and one noise row per step (float32)."""
    r = np.random.default_rng(seed)
    x_T, outs, noise = (r.standard_normal(s, dtype=np.float32)
                        for s in (SHAPE, (steps, *SHAPE), (steps, *SHAPE)))
    return x_T, outs, noise


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


StepFn = Callable[[int, int, np.ndarray, np.ndarray], np.ndarray]
WORST: list[tuple[float, str]] = []  # each run's worst per-step error (printed with -s)


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    if WORST:
        err, where = max(WORST)
        print(f"\ndiffusers parity: {len(WORST)} runs, worst per-step rel err {err:.2e} in {where}")


def _checked_steps(n: int, phase: int) -> np.ndarray:
    if n <= 50:
        return np.arange(n)
    return np.union1d(np.arange(phase % 4, n, 4), np.r_[0:4, n - 4:n])


def _per_step(plan: SamplingPlan, reference: StepFn, x_T: np.ndarray, outs: np.ndarray,
              noise: np.ndarray, label: str, phase: int = 0) -> float:
    """Run sample_loop; check x after step i against reference(i, t_i, x_i, out_i) in float64."""
    xs: list[np.ndarray] = []  # the x handed to the model at each step

    def model(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        i = len(xs)
        assert np.all(t == plan.train_timesteps[i]), f"{label}: step {i} got t={t}"
        xs.append(x.copy())
        return outs[i]

    final = sample_loop(model, plan, x_T, noise=noise)
    assert len(xs) == plan.steps
    traj = np.stack([*xs, final]).astype(np.float64)  # [N + 1, ...]: x_i, then the result
    steps = _checked_steps(plan.steps, phase)
    refs = np.stack([reference(int(i), int(plan.train_timesteps[i]), traj[i], outs[i].astype(np.float64))
                     for i in steps])
    axes = tuple(range(1, refs.ndim))
    err = np.max(np.abs(traj[steps + 1] - refs), axis=axes) / np.max(np.abs(refs), axis=axes)
    worst = int(np.argmax(err))
    assert err[worst] <= RTOL, (f"{label}: after step {steps[worst]} "
                                f"(t={plan.train_timesteps[steps[worst]]}) rel err {err[worst]:.2e}")
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    WORST.append((float(err[worst]), f"{test} {label} step {steps[worst]}"))
    return float(err[worst])


# --- timesteps, betas, forward process ------------------------------------------------


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize(
    ("steps", "spacing", "offset"),
    [(n, sp, off) for n in (1, 2, 3, 7, 10, 30, 50, 333, 999, 1000)
     for sp, off in (("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0))
     if not (n == T and off)],  # leading + offset 1 at N = T: test_offset_past_the_end_raises
)
def test_same_timesteps(cls, steps: int, spacing: str, offset: int) -> None:
    sched = cls(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    sched.set_timesteps(steps)
    sampler = "ddpm" if cls is DDPMScheduler else "ddim"
    plan = build_plan(SCHEDULES["linear"][0], "epsilon", SamplerSpec(sampler, steps, spacing, offset))
    np.testing.assert_array_equal(plan.train_timesteps, sched.timesteps.numpy())
    np.testing.assert_array_equal(plan.timesteps, sched.timesteps.numpy().astype(np.float32))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_full_length_spacings_agree(spacing: str) -> None:
    sched = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    sched.set_timesteps(T)
    np.testing.assert_array_equal(sched.timesteps.numpy(), np.arange(T)[::-1])
    plan = build_plan(SCHEDULES["linear"][0], "epsilon", SamplerSpec("ddim", T, spacing))
    np.testing.assert_array_equal(plan.train_timesteps, np.arange(T)[::-1])


def test_offset_past_the_end_raises() -> None:
    # diffusers would index alphas_cumprod[1000] here; we refuse with a fix
    with pytest.raises(ConfigError, match="steps_offset=1 pushes timesteps outside 0..999"):
        build_plan(SCHEDULES["linear"][0], "epsilon", SamplerSpec("ddpm", T, "leading", steps_offset=1))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_same_betas_and_alphas_cumprod(schedule: str) -> None:
    spec, beta_config = SCHEDULES[schedule]
    sched = DDPMScheduler(num_train_timesteps=T, **beta_config)
    betas = make_betas(spec)
    np.testing.assert_allclose(sched.betas.numpy(), betas, rtol=5e-7)
    # float32 cumprod; cosine's capped last beta (0.999 in float32) moves abar_999 by 1.3e-5
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=2e-5)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_forward_process_matches_add_noise(schedule: str) -> None:
    from ddpm_rt.schedule import forward_coefficients

    spec, beta_config = SCHEDULES[schedule]
    sched = DDPMScheduler(num_train_timesteps=T, **beta_config)
    t = np.array([0, 1, 10, 500, 998, 999])
    x0, eps = np.random.default_rng(0).standard_normal((2, len(t), 3))
    signal, scale = forward_coefficients(spec, t)
    ours = signal[:, None] * x0 + scale[:, None] * eps
    theirs = sched.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("variance_type", ["fixed_large_log", "learned", "learned_range"])
def test_unsupported_variance_types_raise(variance_type: str) -> None:
    with pytest.raises(ConfigError, match="choose one of fixed_small, fixed_small_log, fixed_large"):
        SamplerSpec("ddpm", 10, variance_type=variance_type)


# --- DDPM -------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: f"clip{c}")
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(("steps", "spacing", "offset"), CASES, ids=CASE_IDS)
def test_ddpm_per_step_parity(steps, spacing, offset, schedule, prediction_type, clip,
                              monkeypatch) -> None:
    x_T, outs, noise = _data(steps, seed=steps)
    z: list[torch.Tensor] = []
    # DDPMScheduler.step draws its noise with randn_tensor: hand it the test's row instead
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, **k: z[0])
    for k, variance_type in enumerate(VARIANCES):
        sched = _diffusers(DDPMScheduler, schedule, steps, spacing, offset, prediction_type=prediction_type,
                           variance_type=variance_type, clip_sample=clip is not None,
                           clip_sample_range=clip or 1.0)
        plan = build_plan(SCHEDULES[schedule][0], prediction_type,
                          SamplerSpec("ddpm", steps, spacing, offset, variance_type=variance_type),
                          None if clip is None else (-clip, clip))
        np.testing.assert_array_equal(plan.train_timesteps, sched.timesteps.numpy())

        def reference(i: int, t: int, x: np.ndarray, out: np.ndarray, sched=sched) -> np.ndarray:
            z[:] = [torch.from_numpy(noise[i].astype(np.float64))]
            return sched.step(torch.from_numpy(out), t, torch.from_numpy(x), return_dict=False)[0].numpy()

        _per_step(plan, reference, x_T, outs, noise, label=variance_type,
                  phase=k + len(VARIANCES) * PREDICTIONS.index(prediction_type))


# --- DDIM -------------------------------------------------------------------------------


def _ddim_eq12(ac: float, ac_prev: float, prediction_type: str, clip: float | None, eta: float,
               x: np.ndarray, out: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Song et al. 2021 eq. 12 in float64, with abar and abar' of the current and previous step."""
    sa, sb = np.sqrt(ac), np.sqrt(1 - ac)
    if prediction_type == "epsilon":
        x0, eps = (x - sb * out) / sa, out
    elif prediction_type == "sample":
        x0, eps = out, (x - sa * out) / sb
    else:  # v = sqrt(abar)·eps - sqrt(1-abar)·x0
        x0, eps = sa * x - sb * out, sa * out + sb * x
    if clip is not None:
        x0 = np.clip(x0, -clip, clip)
    sigma = eta * np.sqrt((1 - ac_prev) / (1 - ac)) * np.sqrt(1 - ac / ac_prev)  # eq. 16
    return np.sqrt(ac_prev) * x0 + np.sqrt(1 - ac_prev - sigma**2) * eps + sigma * z


def _diffusers_prev_is_the_list(ts: np.ndarray) -> bool:
    """Whether diffusers' prev_t = t - T//N names the same previous step as our list."""
    listed = np.append(ts[1:], -1)
    theirs = ts - T // len(ts)
    return bool(np.all((theirs == listed) | ((theirs < 0) & (listed < 0))))


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: f"clip{c}")
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(("steps", "spacing", "offset"), CASES, ids=CASE_IDS)
def test_ddim_per_step_parity(steps, spacing, offset, schedule, prediction_type, clip) -> None:
    x_T, outs, noise = _data(steps, seed=steps + 1)
    schedulers = {one: _diffusers(DDIMScheduler, schedule, steps, spacing, offset,
                                  prediction_type=prediction_type, clip_sample=clip is not None,
                                  clip_sample_range=clip or 1.0, set_alpha_to_one=one)
                  for one in (True, False)}
    runs = [(eta, one) for eta in (0.0, 0.5, 1.0) for one in (True, False)]
    for k, (eta, set_alpha_to_one) in enumerate(runs):
        label = f"eta={eta} set_alpha_to_one={set_alpha_to_one}"
        sched = schedulers[set_alpha_to_one]  # eta is an argument of step()
        plan = build_plan(SCHEDULES[schedule][0], prediction_type,
                          SamplerSpec("ddim", steps, spacing, offset, eta=eta,
                                      set_alpha_to_one=set_alpha_to_one),
                          None if clip is None else (-clip, clip))
        ts = sched.timesteps.numpy()
        np.testing.assert_array_equal(plan.train_timesteps, ts)

        def diffusers_step(i: int, t: int, x: np.ndarray, out: np.ndarray, sched=sched,
                           eta=eta) -> np.ndarray:
            z = torch.from_numpy(noise[i].astype(np.float64))
            return sched.step(torch.from_numpy(out), t, torch.from_numpy(x), eta=eta,
                              variance_noise=z, return_dict=False)[0].numpy()

        if _diffusers_prev_is_the_list(ts):
            _per_step(plan, diffusers_step, x_T, outs, noise, label, phase=k)
            continue

        # diffusers steps to t - T//N, a timestep not on the list: use eq. 12 over the list
        acs = sched.alphas_cumprod.numpy()
        prev_ac = np.append(acs[ts[1:]], float(sched.final_alpha_cumprod))
        gap: list[float] = []

        def eq12(i: int, t: int, x: np.ndarray, out: np.ndarray, acs=acs, prev_ac=prev_ac, eta=eta,
                 diffusers_step=diffusers_step, gap=gap) -> np.ndarray:
            ref = _ddim_eq12(acs[t], prev_ac[i], prediction_type, clip, eta, x, out, noise[i])
            gap.append(_rel(diffusers_step(i, t, x, out), ref))
            return ref

        _per_step(plan, eq12, x_T, outs, noise, label, phase=k)
        assert max(gap) > 1e-3, f"{label}: diffusers should differ (its prev_t = t - T//N is off the list)"


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: f"clip{c}")
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_eq12_transcription_matches_diffusers_where_they_agree(prediction_type: str, clip) -> None:
    """The eq. 12 reference above is itself checked against diffusers on a leading schedule."""
    sched = _diffusers(DDIMScheduler, "cosine", 20, "leading", 0, prediction_type=prediction_type,
                       clip_sample=clip is not None, clip_sample_range=clip or 1.0,
                       set_alpha_to_one=False)
    acs, ts = sched.alphas_cumprod.numpy(), sched.timesteps.numpy()
    prev_ac = np.append(acs[ts[1:]], acs[0])
    x, out, z = np.random.default_rng(3).standard_normal((3, *SHAPE))
    for i, t in enumerate(ts):
        theirs = sched.step(torch.from_numpy(out), int(t), torch.from_numpy(x), eta=0.7,
                            variance_noise=torch.from_numpy(z), return_dict=False)[0].numpy()
        ours = _ddim_eq12(acs[t], prev_ac[i], prediction_type, clip, 0.7, x, out, z)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12 * np.abs(theirs).max())
