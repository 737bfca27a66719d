"""Schedule / contract flags for sources that do not carry their own (a bare module or UNet folder)."""

from __future__ import annotations

from dataclasses import dataclass

from ddpm_rt.errors import ConfigError
from ddpm_rt.schedule import KINDS, ScheduleSpec
from ddpm_rt.spec import DiffusionSpec


@dataclass(frozen=True)
class ScheduleFlags:
    """Schedule / contract flags for sources that do not carry their own (module, bare UNet)."""

    schedule: str = "linear"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    alpha: float = 0.99
    prediction_type: str = "epsilon"
    sample_shape: str | None = None  # "C,H,W" or "D"
    clip: str | None = None  # "LO,HI", "R" (= -R,R) or "none"

    def diffusion_spec(self, sample_shape: tuple[int, ...] | None = None) -> DiffusionSpec:
        shape = parse_shape(self.sample_shape) if self.sample_shape else sample_shape
        if shape is None:
            raise ConfigError("this source needs --sample-shape C,H,W (or D for vectors)")
        if self.schedule not in KINDS:
            raise ConfigError(f"unknown --schedule {self.schedule!r}; choose one of {', '.join(KINDS)}")
        if self.schedule == "betas":
            raise ConfigError("--schedule betas needs explicit betas: export a diffusers folder with trained_betas instead")
        schedule = ScheduleSpec(
            kind=self.schedule, num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start, beta_end=self.beta_end, alpha=self.alpha,
        )
        return DiffusionSpec(schedule, self.prediction_type, shape, clip=parse_clip(self.clip))


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        shape = ()
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ConfigError(f"--sample-shape must be C,H,W or D with positive integers, got {text!r}")
    return shape


def parse_clip(text: str | None) -> tuple[float, float] | None:
    if text is None or text.strip().lower() in ("", "none", "off"):
        return None
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] > 0:
        return (-parts[0], parts[0])
    if len(parts) == 2 and parts[0] < parts[1]:
        return (parts[0], parts[1])
    raise ConfigError(f"--clip must be LO,HI with LO < HI, a positive R (= -R,R) or none; got {text!r}")
