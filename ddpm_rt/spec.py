"""DiffusionSpec: everything a sampler must know about a trained denoiser besides its weights.

It travels with every model form: built-in models, `ddpm-rt train` checkpoints
(config JSON) and exported bundles (manifest), so all of them plan the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ddpm_rt.conditioning import CondInput, parse_conditioning
from ddpm_rt.errors import ConfigError
from ddpm_rt.plan import PREDICTION_TYPES, SamplerSpec, SamplingPlan, build_plan, default_sampler
from ddpm_rt.schedule import ScheduleSpec

GUIDANCE_KEY = "guidance_scale"  # in sampler_defaults: a conditional model's default CFG scale


@dataclass(frozen=True)
class DiffusionSpec:
    """The diffusion contract of one denoiser ``out = f(x, t, *conditioning)``."""

    schedule: ScheduleSpec
    prediction_type: str  # epsilon | sample | v_prediction | next_sample
    sample_shape: tuple[int, ...]  # one sample, no batch: (C, H, W) or (D,)
    data_range: tuple[float, float] = (-1.0, 1.0)
    clip: tuple[float, float] | None = None  # clip of x0^ while sampling (None = off)
    sampler_defaults: dict[str, Any] = field(default_factory=dict)  # e.g. {"step_scale": 1.5}
    conditioning: tuple[CondInput, ...] = ()  # inputs after (x, t), in graph order (ddpm_rt.conditioning)

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"unknown prediction type {self.prediction_type!r}; "
                f"choose one of {', '.join(PREDICTION_TYPES)}"
            )
        if len(self.sample_shape) not in (1, 3) or min(self.sample_shape) < 1:
            raise ConfigError(
                f"sample shape must be (C, H, W) or (D,), got {self.sample_shape}"
            )

    @property
    def timestep_meaning(self) -> str:
        return self.schedule.timestep_meaning

    @property
    def conditional(self) -> bool:
        return bool(self.conditioning)

    @property
    def default_guidance(self) -> float:
        """The classifier-free guidance scale this model samples with by default (measured; 1 = none)."""
        return float(self.sampler_defaults.get(GUIDANCE_KEY, 1.0))

    @property
    def is_image(self) -> bool:
        return len(self.sample_shape) == 3

    def sampler(self, steps: int | None = None, **overrides: Any) -> SamplerSpec:
        """The default sampler for this model, with the model's own defaults then `overrides`."""
        merged = {**self.sampler_defaults, **{k: v for k, v in overrides.items() if v is not None}}
        name = merged.pop("sampler", None)
        merged.pop(GUIDANCE_KEY, None)  # a conditional model's default guidance scale: not a sampler setting
        unknown = sorted(set(merged) - {f.name for f in fields(SamplerSpec)})
        if unknown:
            raise ConfigError(
                f"unknown sampler setting(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(f.name for f in fields(SamplerSpec))}"
            )
        return replace(default_sampler(self.schedule, steps, name), **merged)

    def plan(self, sampler: SamplerSpec) -> SamplingPlan:
        return build_plan(self.schedule, self.prediction_type, sampler, self.clip)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "schedule": self.schedule.to_dict(),
            "prediction_type": self.prediction_type,
            "timestep_meaning": self.timestep_meaning,
            "sample_shape": list(self.sample_shape),
            "data_range": list(self.data_range),
            "clip": None if self.clip is None else list(self.clip),
            "sampler_defaults": dict(self.sampler_defaults),
        }
        if self.conditioning:  # unconditional specs serialise exactly as before
            d["conditioning"] = [c.to_dict() for c in self.conditioning]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionSpec:
        try:
            clip = d.get("clip")
            return cls(
                schedule=ScheduleSpec.from_dict(d["schedule"]),
                prediction_type=d["prediction_type"],
                sample_shape=tuple(int(s) for s in d["sample_shape"]),
                data_range=tuple(float(v) for v in d.get("data_range", (-1.0, 1.0))),
                clip=None if clip is None else (float(clip[0]), float(clip[1])),
                sampler_defaults=dict(d.get("sampler_defaults", {})),
                conditioning=parse_conditioning(d.get("conditioning")),
            )
        except (KeyError, TypeError) as e:
            raise ConfigError(f"diffusion spec is missing or has a malformed field: {e}") from None
