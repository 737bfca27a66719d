"""SamplingPlan: every sampler as per-step coefficient tables, built once in float64.

Notation (Ho et al. 2020; Song et al. 2021), per kept step i with train timestep t
and the previous kept timestep t' (or "none" after the last step):

    abar   = alphas_cumprod[t]        abar'  = alphas_cumprod[t'] (1 or abar_0 after the last)
    x0^    = cx·x + co·out            predicted clean sample, by prediction type
    eps^   = ex·x + eo·out            predicted noise, by prediction type

Every sampler step is then one affine update of the current sample ``x`` and the
model output ``out`` (plus noise):

    no clip:  x_prev = a·x + b·out + sigma·z
    clip:     x_prev = p0·clip(cx·x + co·out, lo, hi) + a·x + b·out + sigma·z

where, with clip, the x0^ term is split out so it can be clipped (p0 = 0 without clip).

Multistep solvers (dpmpp-2m, dpmpp-3m, unipc, ipndm; equations in `ddpm_rt.multistep`) also
read a fixed history of H past *converted outputs* d (x0^, or eps^ for ipndm):

    d_i    = cx·x + co·out              (clipped to [lo, hi] with clip; d is x0^ then)
    x_prev = a·x + b·out + p0·d_i + Σ_{j=1..H} hist[i, j-1]·d_{i-j} + sigma·z

with d_i computed whenever the plan `converts` (clip, or H > 0). Without clip, d_i's own term
is folded into a and b in float64 (p0 = 0), as for ddim; d_i is still kept for later steps.
Loops keep d in a ring of H + 1 buffers, d_i in slot i mod (H + 1) (`SamplingPlan.ring_slots`),
zeroed before step 0 (weights of d's from before step 0 are 0, but 0·garbage could be NaN).
A plain plan (ddpm, ddim, ...) has H = 0: with clip its ring is the one clipped-x0^ buffer.
The loop only indexes these tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from ddpm_rt import multistep
from ddpm_rt.errors import ConfigError
from ddpm_rt.schedule import (
    SPACINGS,
    ScheduleSpec,
    alpha_power_levels,
    alphas_cumprod,
    check_steps,
    respace,
    respace_multistep,
)

SAMPLERS = ("ddpm", "ddim", "direct", "geometric", *multistep.MULTISTEP)
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "next_sample")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")
# Which samplers each schedule family can drive, and its default.
SAMPLERS_FOR_FAMILY = {"vp": ("ddim", "ddpm", *multistep.MULTISTEP), "interp": ("direct",), "alpha_power": ("geometric",)}


@dataclass(frozen=True)
class SamplerSpec:
    """How to sample: sampler name, step count and the knobs of each sampler."""

    sampler: str = "ddim"
    steps: int = 50
    spacing: str = "leading"
    steps_offset: int = 0
    eta: float = 0.0  # ddim: 0 = deterministic, 1 = DDPM-like
    variance_type: str = "fixed_small"  # ddpm
    set_alpha_to_one: bool = True  # ddim: abar after the last step is 1 (else abar_0)
    step_scale: float = 1.0  # geometric (seed 004): the STEP_SIZE exponent
    karras_sigmas: bool = False  # multistep: noise levels of Karras et al. 2022 (rho = 7)
    lower_order_final: bool = True  # dpmpp/unipc: lower orders on the last steps of short runs

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.spacing not in SPACINGS:
            raise ConfigError(f"unknown spacing {self.spacing!r}; choose one of {', '.join(SPACINGS)}")
        if self.variance_type not in VARIANCE_TYPES:
            raise ConfigError(
                f"unknown variance type {self.variance_type!r}; choose one of {', '.join(VARIANCE_TYPES)}"
            )
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.eta < 0:
            raise ConfigError(f"eta must be >= 0, got {self.eta}")
        if self.step_scale <= 0:
            raise ConfigError(f"step_scale must be > 0, got {self.step_scale}")

    @property
    def deterministic(self) -> bool:
        return self.sampler in ("direct", "geometric", *multistep.MULTISTEP) or (
            self.sampler == "ddim" and self.eta == 0)


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """Per-step float32 tables (one row per step, in sampling order)."""

    sampler: SamplerSpec
    timesteps: np.ndarray  # float32 [N]: the model's `t` input at each step
    train_timesteps: np.ndarray  # int64 [N]: index into the training schedule (or n / k)
    a: np.ndarray  # float32 [N]: coefficient of x
    b: np.ndarray  # float32 [N]: coefficient of the model output
    sigma: np.ndarray  # float32 [N]: std of the added noise (0 = none drawn)
    cx: np.ndarray  # float32 [N]: x0^ = cx·x + co·out (used only with clip)
    co: np.ndarray
    p0: np.ndarray  # float32 [N]: coefficient of d_i = clip(cx·x + co·out) (0 without clip)
    clip: tuple[float, float] | None = None
    meta: dict = field(default_factory=dict)
    # float32 [N, H]: weight of d_{i-j} (j = 1..H) in step i; H = 0 for single-step samplers
    hist: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.hist is None:
            object.__setattr__(self, "hist", np.zeros((self.steps, 0), dtype=np.float32))
        assert self.hist.shape[0] == self.steps and self.hist.dtype == np.float32, self.hist.shape

    @property
    def steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def depth(self) -> int:
        """H: how many past converted outputs a step reads."""
        return int(self.hist.shape[1])

    @property
    def converts(self) -> bool:
        """Whether a step computes d_i = [clip](cx·x + co·out) (clip, or a history to feed)."""
        return self.clip is not None or self.depth > 0

    @cached_property
    def ring_slots(self) -> np.ndarray:
        """int64 [N, H + 1] (read-only, made once): ring slot of d_{i-j} at step i, j = 0..H,
        slot = (i - j) mod (H + 1), so d_i overwrites d_{i-H-1}, the one no longer needed."""
        i, j = np.arange(self.steps)[:, None], np.arange(self.depth + 1)[None, :]
        slots = np.mod(i - j, self.depth + 1).astype(np.int64)
        slots.setflags(write=False)
        return slots

    @property
    def stochastic(self) -> bool:
        return bool(np.any(self.sigma > 0))

    def head(self, k: int) -> SamplingPlan:
        """The first `k` steps alone (e.g. one step = one denoiser call, for per-call parity)."""
        if not 1 <= k <= self.steps:
            raise ConfigError(f"head({k}) of a {self.steps}-step plan: k must be in 1..{self.steps}")
        cut = {f: getattr(self, f)[:k].copy() for f in
               ("timesteps", "train_timesteps", "a", "b", "sigma", "cx", "co", "p0", "hist")}
        return replace(self, **cut, meta=dict(self.meta))

    def table(self) -> np.ndarray:
        """All coefficient columns as one float32 [N, 7] array: t, a, b, sigma, cx, co, p0."""
        return np.stack(
            [self.timesteps, self.a, self.b, self.sigma, self.cx, self.co, self.p0], axis=1
        ).astype(np.float32)


def _x0_eps_coefficients(prediction_type: str, ac: np.ndarray) -> tuple[np.ndarray, ...]:
    """(cx, co, ex, eo) so that x0^ = cx·x + co·out and eps^ = ex·x + eo·out."""
    sa, sb = np.sqrt(ac), np.sqrt(1.0 - ac)
    zero, one = np.zeros_like(ac), np.ones_like(ac)
    if prediction_type == "epsilon":  # x0^ = (x - sqrt(1-abar)·eps)/sqrt(abar)
        return 1.0 / sa, -sb / sa, zero, one
    if prediction_type == "sample":  # eps^ = (x - sqrt(abar)·x0)/sqrt(1-abar)
        return zero, one, 1.0 / sb, -sa / sb
    if prediction_type == "v_prediction":  # x0^ = sqrt(abar)x - sqrt(1-abar)v; eps^ = sqrt(abar)v + sqrt(1-abar)x
        return sa, -sb, sb, sa
    raise ConfigError(
        f"prediction type {prediction_type!r} cannot drive ddpm/ddim; use epsilon, sample or v_prediction"
    )


def _vp_plan(
    schedule: ScheduleSpec, prediction_type: str, spec: SamplerSpec, clip: tuple[float, float] | None
) -> SamplingPlan:
    T = schedule.num_train_timesteps
    ts = respace(T, spec.steps, spec.spacing, spec.steps_offset)
    acs = alphas_cumprod(schedule)
    ac = acs[ts]
    final = 1.0 if (spec.sampler == "ddpm" or spec.set_alpha_to_one) else acs[0]
    # previous timestep always comes from the kept list, never t - T//N
    ac_prev = np.concatenate([acs[ts[1:]], [final]])
    cx, co, ex, eo = _x0_eps_coefficients(prediction_type, ac)

    if spec.sampler == "ddpm":
        # Ho et al. eq. 7: mu = p0·x0^ + cs·x_t, with the respaced beta_t = 1 - abar/abar'
        beta_t = 1.0 - ac / ac_prev
        p0 = np.sqrt(ac_prev) * beta_t / (1.0 - ac)
        cs = np.sqrt(1.0 - beta_t) * (1.0 - ac_prev) / (1.0 - ac)
        if spec.variance_type == "fixed_large":
            var = beta_t
        else:  # fixed_small(_log): posterior variance beta~_t, eq. 7
            var = np.maximum((1.0 - ac_prev) / (1.0 - ac) * beta_t, 1e-20)
        sigma = np.where(ts > 0, np.sqrt(var), 0.0)  # no noise at train step 0
        x_coef, out_coef = cs, np.zeros_like(cs)
    else:
        # Song et al. eq. 12: x' = sqrt(abar')·x0^ + sqrt(1 - abar' - s²)·eps^ + s·z,
        # s = eta·sqrt((1-abar')/(1-abar))·sqrt(1 - abar/abar')  (eq. 16)
        var = (1.0 - ac_prev) / (1.0 - ac) * (1.0 - ac / ac_prev)
        sigma = spec.eta * np.sqrt(var)
        p0 = np.sqrt(ac_prev)
        d = np.sqrt(np.maximum(1.0 - ac_prev - sigma**2, 0.0))
        x_coef, out_coef = d * ex, d * eo

    if clip is None:
        # fold x0^ into the affine update: p0·(cx·x + co·out)
        a, b = x_coef + p0 * cx, out_coef + p0 * co
        p0 = np.zeros_like(p0)
    else:
        a, b = x_coef, out_coef
    return _tables(spec, ts.astype(np.float64), ts, a, b, sigma, cx, co, p0, clip,
                   {"alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev})


def _multistep_plan(
    schedule: ScheduleSpec, prediction_type: str, spec: SamplerSpec, clip: tuple[float, float] | None
) -> SamplingPlan:
    """dpmpp-2m / dpmpp-3m / unipc / ipndm: history weights from `ddpm_rt.multistep`."""
    name = spec.sampler
    if clip is not None and multistep.CONVERTS_TO[name] != "x0":
        raise ConfigError(f"{name} steps on eps^ and cannot clip x0^, but this model clips x0^ to "
                          f"[{clip[0]:g}, {clip[1]:g}]; use --sampler dpmpp-2m, dpmpp-3m or unipc")
    T = schedule.num_train_timesteps
    acs = alphas_cumprod(schedule)
    level_all = np.sqrt((1.0 - acs) / acs)  # s(t), t = 0..T-1, increasing
    if spec.karras_sigmas:
        check_steps(spec.steps, T)
        ts, level = multistep.karras_levels(level_all, spec.steps, name, schedule.kind == "cosine")
    else:
        ts = respace_multistep(T, spec.steps, spec.spacing, spec.steps_offset)
        level = level_all[ts]
    level = np.concatenate([level, [0.0]])  # s_N = 0: the last step lands on clean data
    a, w, order = multistep.history_coefficients(name, level, spec.lower_order_final)
    ac = 1.0 / (1.0 + level[:-1] ** 2)  # abar at s_i (= abar[t_i] without Karras)
    cx, co, ex, eo = _x0_eps_coefficients(prediction_type, ac)
    if multistep.CONVERTS_TO[name] == "eps":
        cx, co = ex, eo
    z = np.zeros(spec.steps)
    b, p0 = z, w[:, 0]
    if clip is None:
        # fold d_i's own term into a and b in float64 (as for ddim): x/alpha and s·eps^ nearly
        # cancel at high noise, which float32 would not survive. d_i is still stored for later steps.
        a, b, p0 = a + p0 * cx, p0 * co, z
    plan = _tables(spec, ts.astype(np.float64), ts, a, b, z, cx, co, p0, clip,
                   {"noise_levels": level, "orders": order.tolist(), "converts_to": multistep.CONVERTS_TO[name]})
    hist = np.ascontiguousarray(w[:, 1:].astype(np.float32))
    assert hist.shape == (spec.steps, multistep.HISTORY[name]) and np.all(np.isfinite(hist))
    return replace(plan, hist=hist)


def _direct_plan(schedule: ScheduleSpec, spec: SamplerSpec) -> SamplingPlan:
    # Seed 000: the model output *is* x_{k+1}; k runs 0 (noise) .. T-1.
    T = schedule.num_train_timesteps
    if spec.steps != T:
        raise ConfigError(
            f"the interp model was trained for exactly {T} steps; use --steps {T}"
        )
    k = np.arange(T)
    n = np.zeros(T)
    return _tables(spec, k.astype(np.float64), k, n, n + 1.0, n, n, n, n, None, {})


def _geometric_plan(schedule: ScheduleSpec, spec: SamplerSpec) -> SamplingPlan:
    # Seed 004: with n'_max = steps, alpha' = alpha^(n_max/n'_max) (so alpha'^n'_max = alpha^n_max);
    # for n = n'_max..1: N^ = M(A_n, alpha'^n); A_{n-1} = (A_n - N^·(1 - alpha'^s)) / alpha'^s.
    n_max = schedule.num_train_timesteps
    check_steps(spec.steps, n_max)
    alpha_p = schedule.alpha ** (n_max / spec.steps)
    n = np.arange(spec.steps, 0, -1)
    level = alpha_power_levels(alpha_p, n)
    g = alpha_p**spec.step_scale
    a = np.full(spec.steps, 1.0 / g)
    b = np.full(spec.steps, -(1.0 - g) / g)
    z = np.zeros(spec.steps)
    return _tables(spec, level, n, a, b, z, z, z, z, None, {"alpha_prime": alpha_p})


def _tables(spec, t_model, t_train, a, b, sigma, cx, co, p0, clip, meta) -> SamplingPlan:
    f32 = [np.ascontiguousarray(np.asarray(v, dtype=np.float64).astype(np.float32))
           for v in (t_model, a, b, sigma, cx, co, p0)]
    for arr in f32:
        assert arr.shape == (spec.steps,), arr.shape
        assert np.all(np.isfinite(arr)), "non-finite coefficient in sampling plan"
    tm, a, b, sigma, cx, co, p0 = f32
    return SamplingPlan(spec, tm, np.asarray(t_train, dtype=np.int64), a, b, sigma, cx, co, p0,
                        None if clip is None else (float(clip[0]), float(clip[1])), meta)


def build_plan(
    schedule: ScheduleSpec,
    prediction_type: str,
    sampler: SamplerSpec,
    clip: tuple[float, float] | None = None,
) -> SamplingPlan:
    """Precompute the tables for `sampler` on a model trained with `schedule`."""
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(
            f"unknown prediction type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}"
        )
    allowed = SAMPLERS_FOR_FAMILY[schedule.family]
    if sampler.sampler not in allowed:
        raise ConfigError(
            f"sampler {sampler.sampler!r} does not fit a {schedule.kind!r} schedule; "
            f"use --sampler {' or '.join(allowed)}"
        )
    if clip is not None and clip[0] >= clip[1]:
        raise ConfigError(f"clip range must be (low, high) with low < high, got {clip}")
    if sampler.karras_sigmas and sampler.sampler not in multistep.MULTISTEP:
        raise ConfigError(f"Karras noise levels need a multistep sampler ({', '.join(multistep.MULTISTEP)}), "
                          f"not {sampler.sampler!r}; drop karras_sigmas or change the sampler")
    if sampler.sampler in multistep.MULTISTEP:
        return _multistep_plan(schedule, prediction_type, sampler, clip)
    if schedule.family == "vp":
        return _vp_plan(schedule, prediction_type, sampler, clip)
    if schedule.family == "interp":
        if prediction_type != "next_sample":
            raise ConfigError("an interp schedule needs prediction type 'next_sample'")
        return _direct_plan(schedule, sampler)
    if prediction_type != "epsilon":
        raise ConfigError("an alpha_power schedule needs prediction type 'epsilon' (the noise N)")
    return _geometric_plan(schedule, sampler)


# The default for VP models, chosen by measurement (benchmarks/results/solver_quality_digits.md):
# UniPC reaches DDIM-50's feature FD on the shipped digits model in 8-10 steps under both
# spacings and swissroll's in 10-15; 15 steps leaves that margin and is ~3x fewer calls than DDIM-50.
VP_DEFAULT = ("unipc", 15)
DEFAULT_FOR_FAMILY = {"vp": VP_DEFAULT[0], "interp": "direct", "alpha_power": "geometric"}


def default_sampler(schedule: ScheduleSpec, steps: int | None = None, sampler: str | None = None,
                    **overrides) -> SamplerSpec:
    """A sensible SamplerSpec for a schedule family: unipc-min(15, T) / direct-T / geometric-T.

    VP models: unipc, or `sampler` when the model names one (ddim/ddpm default to min(50, T)
    steps, multistep solvers to min(15, T)); unipc falls back to ddim when N > T // 2, where
    multistep timesteps would repeat.
    """
    name = sampler or DEFAULT_FOR_FAMILY[schedule.family]
    T = schedule.num_train_timesteps
    if steps is None:
        if schedule.family != "vp":
            steps = T
        else:  # never more steps than trained
            steps = min(VP_DEFAULT[1] if name in multistep.MULTISTEP else 50, T)
    if sampler is None and name == VP_DEFAULT[0] and steps > T // 2:
        name = "ddim"
    return replace(SamplerSpec(sampler=name, steps=steps), **overrides)
