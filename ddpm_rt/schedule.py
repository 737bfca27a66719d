"""Noise schedules and respacing, in float64 numpy (no torch import).

Three families are supported:

* variance preserving ("vp"): ``x_t = sqrt(abar_t)·x0 + sqrt(1 - abar_t)·eps`` with
  ``abar_t = prod_{s<=t} (1 - beta_s)``; betas are ``linear`` (DDPM, 1e-4..0.02),
  ``scaled_linear``, ``cosine`` (Nichol & Dhariwal, s=0.008, capped at 0.999) or
  explicit ``betas``.  The model is conditioned on the integer train index ``t``.
* ``interp`` (seed 000): ``x_k = x0·(1 - a_k) + n·a_k`` with ``a_k = 1 - k/T``,
  k = 0 (pure noise) .. T (clean).  The model maps ``(x_k, k)`` to ``x_{k+1}``.
* ``alpha_power`` (seed 004): ``A_n = alpha^n·A_0 + (1 - alpha^n)·N``, n = 0..n_max.
  The model is conditioned on the continuous level ``alpha^n`` and predicts ``N``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ddpm_rt.errors import ConfigError

VP_KINDS = ("linear", "scaled_linear", "cosine", "betas")
KINDS = (*VP_KINDS, "interp", "alpha_power")
SPACINGS = ("leading", "trailing", "linspace")

# What the model's `t` input means, per family (stated in every bundle manifest).
TIMESTEP_MEANING = {
    "vp": "train_index",  # integer index into the T-step training schedule, as float32
    "interp": "step_index",  # k in 0..T-1, 0 = pure noise
    "alpha_power": "noise_level",  # continuous alpha^n in (0, 1]
}


@dataclass(frozen=True)
class ScheduleSpec:
    """A training noise schedule: name plus parameters (betas derived, never stored twice)."""

    kind: str = "linear"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    max_beta: float = 0.999
    betas: tuple[float, ...] | None = field(default=None, repr=False)
    alpha: float = 0.99  # alpha_power only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown schedule {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.num_train_timesteps < 1:
            raise ConfigError(
                f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}"
            )
        if self.kind == "betas":
            if not self.betas or len(self.betas) != self.num_train_timesteps:
                raise ConfigError(
                    "schedule 'betas' needs exactly num_train_timesteps explicit betas "
                    f"(got {0 if not self.betas else len(self.betas)} for T={self.num_train_timesteps})"
                )
            b = np.asarray(self.betas, dtype=np.float64)
            if not np.all((b > 0) & (b < 1)):
                raise ConfigError("explicit betas must all lie in (0, 1)")
        if self.kind == "alpha_power" and not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"alpha_power needs 0 < alpha < 1, got {self.alpha}")

    @property
    def family(self) -> str:
        return "vp" if self.kind in VP_KINDS else self.kind

    @property
    def timestep_meaning(self) -> str:
        return TIMESTEP_MEANING[self.family]

    def to_dict(self, with_betas: bool = True) -> dict[str, Any]:
        """JSON form: name + parameters, plus the explicit betas for VP schedules."""
        d: dict[str, Any] = {"kind": self.kind, "num_train_timesteps": self.num_train_timesteps}
        if self.kind in ("linear", "scaled_linear"):
            d |= {"beta_start": self.beta_start, "beta_end": self.beta_end}
        elif self.kind == "cosine":
            d |= {"cosine_s": self.cosine_s, "max_beta": self.max_beta}
        elif self.kind == "alpha_power":
            d |= {"alpha": self.alpha}
        # explicit betas *are* the schedule, so they are written even without `with_betas`
        if self.family == "vp" and (with_betas or self.kind == "betas"):
            d["betas"] = [float(b) for b in make_betas(self)]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScheduleSpec:
        known = {"kind", "num_train_timesteps", "beta_start", "beta_end", "cosine_s",
                 "max_beta", "alpha"}
        if "kind" not in d:
            raise ConfigError(f"schedule needs a 'kind' (one of {', '.join(KINDS)}), got keys {sorted(d)}")
        kwargs = {k: v for k, v in d.items() if k in known}
        if d["kind"] == "betas" and "betas" in d:
            kwargs["betas"] = tuple(float(b) for b in d["betas"])
        return cls(**kwargs)


def _cosine_betas(T: int, s: float, max_beta: float) -> np.ndarray:
    # Nichol & Dhariwal eq. 17: abar(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2);
    # beta_t = 1 - abar(t+1)/abar(t), capped to avoid a singularity at t = T.
    def abar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return np.array(
        [min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)], dtype=np.float64
    )


def make_betas(spec: ScheduleSpec) -> np.ndarray:
    """beta_1..beta_T as float64 [T], for the variance-preserving family."""
    T = spec.num_train_timesteps
    if spec.kind == "linear":
        betas = np.linspace(spec.beta_start, spec.beta_end, T, dtype=np.float64)
    elif spec.kind == "scaled_linear":
        betas = np.linspace(spec.beta_start**0.5, spec.beta_end**0.5, T, dtype=np.float64) ** 2
    elif spec.kind == "cosine":
        betas = _cosine_betas(T, spec.cosine_s, spec.max_beta)
    elif spec.kind == "betas":
        assert spec.betas is not None
        betas = np.asarray(spec.betas, dtype=np.float64)
    else:
        raise ConfigError(f"schedule {spec.kind!r} has no betas (it is not variance preserving)")
    assert betas.shape == (T,)
    return betas


def alphas_cumprod(spec: ScheduleSpec) -> np.ndarray:
    """abar_t for t = 0..T-1, float64 [T]."""
    return np.cumprod(1.0 - make_betas(spec))


def interp_levels(spec: ScheduleSpec) -> np.ndarray:
    """Seed 000's time_bar: noise share a_k = 1 - k/T for k = 0..T, float64 [T+1]."""
    return 1.0 - np.linspace(0.0, 1.0, spec.num_train_timesteps + 1, dtype=np.float64)


def alpha_power_levels(alpha: float, n: np.ndarray) -> np.ndarray:
    """Seed 004's conditioning value alpha^n (float64)."""
    return np.power(float(alpha), np.asarray(n, dtype=np.float64))


def check_steps(steps: int, T: int) -> None:
    if not 1 <= steps <= T:
        raise ConfigError(f"steps must be between 1 and {T} (the model's training steps), got {steps}")


def respace(T: int, steps: int, spacing: str = "leading", steps_offset: int = 0) -> np.ndarray:
    """Kept train timesteps, descending, int64 [steps] (Lin et al. 2023, table 2).

    The previous timestep of entry i is entry i+1 (or "none" after the last);
    callers must never assume a constant stride.
    """
    check_steps(steps, T)
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        ratio = T // steps
        ts = (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ratio = T / steps
        ts = np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1
    else:
        raise ConfigError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if ts.min() < 0 or ts.max() > T - 1:
        raise ConfigError(
            f"steps_offset={steps_offset} pushes timesteps outside 0..{T - 1}; lower it"
        )
    return ts.copy()


def respaced_betas(spec: ScheduleSpec, kept: np.ndarray) -> np.ndarray:
    """Betas of the respaced chain (improved-diffusion respace.py): from abar at kept steps."""
    ac = alphas_cumprod(spec)[np.sort(kept)]
    prev = np.concatenate([[1.0], ac[:-1]])
    return 1.0 - ac / prev


def forward_coefficients(spec: ScheduleSpec, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(signal, noise) scales so that x_t = signal·x0 + noise·eps, for train index t.

    vp: t indexes abar; interp: t is k (level a_k); alpha_power: t is n (level alpha^n).
    """
    t = np.asarray(t)
    if spec.family == "vp":
        ac = alphas_cumprod(spec)[t.astype(np.int64)]
        return np.sqrt(ac), np.sqrt(1.0 - ac)
    if spec.family == "interp":
        a = interp_levels(spec)[t.astype(np.int64)]
        return 1.0 - a, a
    level = alpha_power_levels(spec.alpha, t)
    return level, 1.0 - level


def respace_multistep(T: int, steps: int, spacing: str = "leading", steps_offset: int = 0) -> np.ndarray:
    """Kept train timesteps of the multistep solvers, descending, int64 [steps].

    As diffusers' DPMSolverMultistepScheduler / UniPCMultistepScheduler: linspace and leading
    lay out steps + 1 points and drop the last one (the solver's final step goes to noise
    level 0, not to a kept timestep); trailing is `respace`'s. Timesteps must be distinct:
    a repeated one is a zero-length step (h = 0), which the multistep formulas divide by.
    """
    check_steps(steps, T)
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    elif spacing == "leading":
        ratio = T // (steps + 1)
        ts = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + steps_offset
    else:
        return respace(T, steps, spacing, steps_offset)
    if ts.min() < 0 or ts.max() > T - 1:
        raise ConfigError(f"steps_offset={steps_offset} pushes timesteps outside 0..{T - 1}; lower it")
    if np.any(np.diff(ts) >= 0):
        raise ConfigError(
            f"{spacing} spacing repeats a timestep at {steps} of {T} steps, which a multistep solver "
            "cannot take (a zero-length step); use --spacing trailing or fewer steps"
        )
    return ts.copy()
