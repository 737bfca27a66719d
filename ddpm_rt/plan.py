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

Editing (SDEdit / img2img strength, inpainting, RePaint; `ddpm_rt.editing`):

    start    the plan runs the last N - start of the N-step schedule (diffusers' t_start); the
             multistep solvers warm up from there (lower orders first)
    qx, qn   the schedule's forward coefficients at each row's input level (Ho et al. eq. 4;
             float64 → float32): with an image, x_start = qx_0·image + qn_0·z (`init`)
    kx, kn   the known region after row i is kx_i·image + kn_i·z_i (z_i = row i's own noise, as
             diffusers' RePaintScheduler); the last calling row has (1, 0), so the final known
             region is the image itself
    calls    int8 per row: 1 = the row calls the denoiser; 0 = a RePaint undo row, which only
             re-noises (x' = a·x + sigma·z, Lugmayr et al. 2022 Alg. 1 line 10); 2 = a
             feature-cache row (the shallow graph)
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
    interp_levels,
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
    start: int = 0  # editing: skip the first `start` of the `steps` steps (diffusers' t_start)
    repaint: tuple[int, int] | None = None  # RePaint (jump_length, jump_n_sample); ddim only

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
        if not 0 <= self.start < self.steps:
            raise ConfigError(f"the plan would run no step: start {self.start} of {self.steps} steps; "
                              f"the start must be in 0..{self.steps - 1} (raise the strength or the steps)")
        if self.repaint is not None:
            jump, resample = self.repaint
            if jump < 1 or resample < 1:
                raise ConfigError(f"RePaint needs jump length >= 1 and resample count >= 1, got {jump}, {resample}")
            if self.sampler != "ddim":
                raise ConfigError(f"RePaint resampling runs on the ddim update (eta sets the noise), not "
                                  f"{self.sampler!r}; use --sampler ddim (--eta 1 for DDPM-like steps)")
            if self.start:
                raise ConfigError("RePaint resampling starts from the top of the schedule; drop --strength")

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
    # editing (module docstring): the known region after row i is kx·image + kn·z_i
    kx: np.ndarray | None = None  # float32 [N]
    kn: np.ndarray | None = None  # float32 [N]
    calls: np.ndarray | None = None  # int8 [N]: 1 denoiser call, 0 undo row (no call), 2 feature-cache row
    qx: np.ndarray | None = None  # float32 [N]: x at row i's level = qx·x0 + qn·z (forward coefficients)
    qn: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.steps
        defaults = {"hist": np.zeros((n, 0), np.float32), "kx": np.ones(n, np.float32),
                    "kn": np.zeros(n, np.float32), "calls": np.ones(n, np.int8),
                    "qx": np.zeros(n, np.float32), "qn": np.ones(n, np.float32)}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        assert self.hist.shape[0] == n and self.hist.dtype == np.float32, self.hist.shape
        for column in (self.kx, self.kn, self.qx, self.qn):
            assert column.shape == (n,) and column.dtype == np.float32, column
        assert self.calls.shape == (n,) and self.calls.dtype == np.int8

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

    @property
    def start(self) -> int:
        return self.sampler.start

    @property
    def init(self) -> tuple[float, float]:
        """(ix, in): with an image, x_start = ix·image + in·z — the first row's forward coefficients."""
        return float(self.qx[0]), float(self.qn[0])

    @property
    def model_calls(self) -> int:
        """Rows that call the denoiser (all of them but RePaint's undo rows)."""
        return int(np.count_nonzero(self.calls))

    @property
    def cached_calls(self) -> int:
        """Rows that run the shallow graph on the cached deep feature (feature caching)."""
        return int(np.count_nonzero(self.calls == 2))

    @property
    def uniform(self) -> bool:
        """Every row calls the full denoiser (no undo rows, no feature-cache rows)."""
        return bool(np.all(self.calls == 1))

    def noise_rows(self, masked: bool = False) -> np.ndarray:
        """bool [N] (read-only, made once): rows that read their noise z_i — sigma > 0, or, with a
        mask, a calling row whose known region is still noisy."""
        return self._noise_rows[int(masked)]

    @cached_property
    def _noise_rows(self) -> tuple[np.ndarray, np.ndarray]:
        plain = self.sigma > 0
        masked = plain | ((self.kn > 0) & (self.calls != 0))
        for rows in (plain, masked):
            rows.setflags(write=False)
        return plain, masked

    ROW_FIELDS = ("timesteps", "train_timesteps", "a", "b", "sigma", "cx", "co", "p0", "hist", "kx", "kn", "calls",
                  "qx", "qn")

    def head(self, k: int) -> SamplingPlan:
        """The first `k` steps alone (e.g. one step = one denoiser call, for per-call parity)."""
        if not 1 <= k <= self.steps:
            raise ConfigError(f"head({k}) of a {self.steps}-step plan: k must be in 1..{self.steps}")
        return self.rows(0, k)

    def rows(self, lo: int, hi: int) -> SamplingPlan:
        """Rows lo..hi-1 as a plan of their own (single-step rows only make sense alone: a
        multistep row reads the history of the rows before it)."""
        if not 0 <= lo < hi <= self.steps:
            raise ConfigError(f"rows({lo}, {hi}) of a {self.steps}-step plan: need 0 <= lo < hi <= {self.steps}")
        cut = {f: getattr(self, f)[lo:hi].copy() for f in self.ROW_FIELDS}
        return replace(self, **cut, meta=dict(self.meta))

    def table(self) -> np.ndarray:
        """All coefficient columns as one float32 [N, 7] array: t, a, b, sigma, cx, co, p0."""
        return np.stack(
            [self.timesteps, self.a, self.b, self.sigma, self.cx, self.co, self.p0], axis=1
        ).astype(np.float32)


CACHE_SCHEDULES = ("uniform", "quadratic")
CACHE_CENTER = 0.5  # quadratic: full steps densest around this fraction of the run


def cache_full_calls(calls: int, interval: int, schedule: str = "uniform") -> np.ndarray:
    """bool [calls]: which of `calls` successive denoiser calls run the full U-Net (the rest reuse
    the deep feature of the last full one: DeepCache, Ma et al. 2024).

    uniform:   every `interval`-th call, from the first (DeepCache's uniform 1:N)
    quadratic: the same number of full calls, ceil(calls / interval), at c + sign(u)·|u|^p·half
               for u evenly in [-1, 1] (c = CACHE_CENTER of the run, half = the distance to the
               run's end on u's side): denser around c (DeepCache's non-uniform 1:N); p starts at
               2 and drops until the positions are distinct; the first call is always full.
    """
    if interval < 1:
        raise ConfigError(f"--cache-interval must be >= 1, got {interval}")
    if schedule not in CACHE_SCHEDULES:
        raise ConfigError(f"unknown cache schedule {schedule!r}; choose one of {', '.join(CACHE_SCHEDULES)}")
    full = np.zeros(calls, bool)
    if schedule == "uniform" or interval == 1 or calls <= 2:
        full[::interval] = True
        return full
    m = -(-calls // interval)  # as many full calls as uniform
    c = CACHE_CENTER * (calls - 1)
    u = np.linspace(-1.0, 1.0, m)
    half = np.where(u < 0, c, calls - 1 - c)
    p = 2.0
    while True:
        idx = np.unique(np.rint(c + np.sign(u) * np.abs(u) ** p * half).astype(np.int64))
        idx = np.unique(np.concatenate([[0], idx]))
        if len(idx) >= m or p <= 1.0:
            break
        p = max(1.0, p - 0.05)
    full[idx[:m] if len(idx) > m else idx] = True
    full[0] = True
    return full


def with_feature_cache(plan: SamplingPlan, interval: int, schedule: str = "uniform") -> SamplingPlan:
    """`plan` with its calling rows split into full (calls = 1) and cached (calls = 2) by `cache_full_calls`."""
    rows = np.flatnonzero(plan.calls != 0)
    full = cache_full_calls(len(rows), interval, schedule)
    calls = plan.calls.copy()
    calls[rows] = np.where(full, 1, 2).astype(np.int8)
    return replace(plan, calls=calls, meta={**plan.meta, "feature_cache": {"interval": interval, "schedule": schedule}})


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
                   {"alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev},
                   levels=(_vp_forward(ac), _vp_forward(ac_prev)))


def _vp_forward(ac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(signal, noise) of x = sqrt(abar)·x0 + sqrt(1 - abar)·z (Ho et al. eq. 4)."""
    return np.sqrt(ac), np.sqrt(1.0 - ac)


def _repaint_plan(
    schedule: ScheduleSpec, prediction_type: str, spec: SamplerSpec, clip: tuple[float, float] | None
) -> SamplingPlan:
    """RePaint (Lugmayr et al. 2022) as diffusers' RePaintScheduler: a DDIM step at every kept
    timestep of the back-and-forth schedule, and an undo row wherever the schedule goes up.

    Timesteps (set_timesteps): on the N-step grid t·(T // N), from N - 1 down to 0; at every
    jump point j = 0, L, 2L, ... < N - L the walk goes back up L steps, R - 1 times. A step at t
    goes to t - T // N (abar 1 after the last); an undo row after a step at t_last re-noises with
    betas[t_last .. t_last + T // N - 1] (undo_step): x' = sqrt(prod(1 - beta))·x +
    sqrt(1 - prod(1 - beta))·z, one draw for the whole jump (the same distribution as diffusers'
    T // N successive draws).
    """
    T, n_steps = schedule.num_train_timesteps, spec.steps
    check_steps(n_steps, T)
    jump, resample = spec.repaint
    grid = T // n_steps
    jumps = {j: resample - 1 for j in range(0, n_steps - jump, jump)}
    walk, t = [], n_steps
    while t >= 1:
        t -= 1
        walk.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump):
                t += 1
                walk.append(t)
    ts = np.asarray(walk, dtype=np.int64) * grid
    acs = alphas_cumprod(schedule)
    betas = 1.0 - acs / np.concatenate([[1.0], acs[:-1]])
    rows = len(ts)
    calls = np.ones(rows, np.int8)
    last = ts[0] + 1
    for i, t in enumerate(ts):  # the pipeline: a step where t < t_last, else undo from t_last
        calls[i] = 1 if t < last else 0
        if calls[i] == 0:
            undo_from = last
        last = t
        ts[i] = t if calls[i] else undo_from  # an undo row records the timestep it starts from
    ac = acs[ts]
    prev = ts - grid
    ac_prev = np.where(prev >= 0, acs[np.maximum(prev, 0)], 1.0)
    cx, co, ex, eo = _x0_eps_coefficients(prediction_type, ac)
    var = (1.0 - ac_prev) / (1.0 - ac) * (1.0 - ac / ac_prev)
    sigma = np.where(ts > 0, spec.eta * np.sqrt(var), 0.0)  # diffusers adds no variance at t = 0
    p0 = np.sqrt(ac_prev)
    d = np.sqrt(np.maximum(1.0 - ac_prev - (spec.eta * np.sqrt(var)) ** 2, 0.0))
    a, b = d * ex, d * eo
    if clip is None:
        a, b, p0 = a + p0 * cx, b + p0 * co, np.zeros_like(p0)
    # undo rows: no call, x' = sqrt(prod(1 - beta))·x + sqrt(1 - prod)·z
    undo = calls == 0
    keep = np.array([np.prod(1.0 - betas[t:min(t + grid, T)]) for t in ts[undo]])
    a[undo], b[undo], p0[undo], cx[undo], co[undo] = np.sqrt(keep), 0.0, 0.0, 0.0, 0.0
    sigma[undo] = np.sqrt(1.0 - keep)
    sig_out, noi_out = _vp_forward(ac_prev)
    return _tables(replace(spec, steps=rows), ts.astype(np.float64), ts, a, b, sigma, cx, co, p0, clip,
                   {"alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev, "grid_steps": n_steps,
                    "repaint": list(spec.repaint)},
                   levels=(_vp_forward(ac), (np.where(undo, 0.0, sig_out), np.where(undo, 0.0, noi_out))),
                   calls=calls, sampler_spec=spec)


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
    a, w, order = multistep.history_coefficients(name, level, spec.lower_order_final, spec.start)
    # rows before `start` are never run: zeros, cut by _tables with every other column
    a, w = (np.concatenate([np.zeros((spec.start, *v.shape[1:])), v]) for v in (a, w))
    order = np.concatenate([np.zeros(spec.start, np.int64), order])
    ac = 1.0 / (1.0 + level ** 2)  # abar at s_i (= abar[t_i] without Karras); 1 at s_N = 0
    ac, ac_next = ac[:-1], ac[1:]
    cx, co, ex, eo = _x0_eps_coefficients(prediction_type, ac)
    if multistep.CONVERTS_TO[name] == "eps":
        cx, co = ex, eo
    z = np.zeros(spec.steps)
    b, p0 = z, w[:, 0]
    if clip is None:
        # fold d_i's own term into a and b in float64 (as for ddim): x/alpha and s·eps^ nearly
        # cancel at high noise, which float32 would not survive. d_i is still stored for later steps.
        a, b, p0 = a + p0 * cx, p0 * co, z
    hist = np.ascontiguousarray(w[:, 1:])
    assert hist.shape == (spec.steps, multistep.HISTORY[name]) and np.all(np.isfinite(hist))
    return _tables(spec, ts.astype(np.float64), ts, a, b, z, cx, co, p0, clip,
                   {"noise_levels": level, "orders": order[spec.start:].tolist(),
                    "converts_to": multistep.CONVERTS_TO[name]},
                   levels=(_vp_forward(ac), _vp_forward(ac_next)), hist=hist)


def _direct_plan(schedule: ScheduleSpec, spec: SamplerSpec) -> SamplingPlan:
    # Seed 000: the model output *is* x_{k+1}; k runs 0 (noise) .. T-1.
    T = schedule.num_train_timesteps
    if spec.steps != T:
        raise ConfigError(
            f"the interp model was trained for exactly {T} steps; use --steps {T}"
        )
    k = np.arange(T)
    n = np.zeros(T)
    a_k = interp_levels(schedule)  # noise share a_0 = 1 .. a_T = 0: x_k = (1 - a_k)·x0 + a_k·z
    return _tables(spec, k.astype(np.float64), k, n, n + 1.0, n, n, n, n, None, {},
                   levels=((1.0 - a_k[:-1], a_k[:-1]), (1.0 - a_k[1:], a_k[1:])))


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
    after = alpha_power_levels(alpha_p, n - 1)  # A_n = alpha^n·A_0 + (1 - alpha^n)·N
    return _tables(spec, level, n, a, b, z, z, z, z, None, {"alpha_prime": alpha_p},
                   levels=((level, 1.0 - level), (after, 1.0 - after)))


def _tables(spec, t_model, t_train, a, b, sigma, cx, co, p0, clip, meta, *, levels, hist=None, calls=None,
            sampler_spec=None) -> SamplingPlan:
    """float64 columns of the whole N-step schedule -> the float32 plan of rows start..N-1.

    `levels` = ((signal, noise) at each row's input, (signal, noise) after it): the forward
    coefficients that give `init` (row `start`'s input level) and the known-region columns.
    """
    n, start = spec.steps, spec.start
    (sig_in, noi_in), (sig_out, noi_out) = levels
    kx, kn = np.array(sig_out, np.float64), np.array(noi_out, np.float64)
    calls = np.ones(n, np.int8) if calls is None else np.asarray(calls, np.int8)
    last = np.flatnonzero(calls)[-1]
    kx[last], kn[last] = 1.0, 0.0  # the last call lands on clean data: the known region is the image
    cols = [np.asarray(v, dtype=np.float64)[start:]
            for v in (t_model, a, b, sigma, cx, co, p0, kx, kn, sig_in, noi_in)]
    f32 = [np.ascontiguousarray(v.astype(np.float32)) for v in cols]
    for arr in f32:
        assert arr.shape == (n - start,), arr.shape
        assert np.all(np.isfinite(arr)), "non-finite coefficient in sampling plan"
    tm, a, b, sigma, cx, co, p0, kx, kn, qx, qn = f32
    h = None if hist is None else np.ascontiguousarray(np.asarray(hist, np.float64)[start:].astype(np.float32))
    return SamplingPlan(sampler_spec or spec, tm, np.asarray(t_train, dtype=np.int64)[start:].copy(),
                        a, b, sigma, cx, co, p0, None if clip is None else (float(clip[0]), float(clip[1])),
                        meta, hist=h, kx=kx, kn=kn, calls=np.ascontiguousarray(calls[start:]), qx=qx, qn=qn)


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
    if sampler.repaint is not None:
        if schedule.family != "vp":
            raise ConfigError(f"RePaint needs a VP (ddpm/ddim) schedule, not {schedule.kind!r}")
        return _repaint_plan(schedule, prediction_type, sampler, clip)
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
