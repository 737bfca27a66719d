"""The backend protocol (tinygrad-style: one file per backend; `ddpm_rt.registry` loads them by name).

A backend runs one denoiser for a fixed maximum batch. It is opened on an *artifact*,
never on a model source: a `Bundle` for the ONNX and TensorRT backends, an `nn.Module`
for the PyTorch ones (the command layer makes either, see `ddpm_rt.prepare`). Host
backends expose ``__call__(x, t) -> out`` on numpy buffers and run the shared host loop;
device backends override ``_run`` with a loop that keeps every buffer on the GPU.
`sample` itself is defined once, here, and checks every result for non-finite values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from ddpm_rt.editing import Edit
from ddpm_rt.errors import ConfigError
from ddpm_rt.plan import SamplingPlan
from ddpm_rt.runtime.finite import FiniteCheck, check_finite
from ddpm_rt.runtime.guidance import Guidance, GuidedModel
from ddpm_rt.runtime.loop import ModelFn, ProgressFn, sample_loop

ArtifactKind = Literal["bundle", "module"]


@dataclass(frozen=True)
class BackendOptions:
    """Knobs shared by backends; each backend reads the ones it understands."""

    threads: int | None = None  # intra-op threads (CPU backends); None = runtime default
    precision: str = "fp32"  # a `ddpm_rt.precision.Precision` value
    cuda_graph: bool = True  # device backends: capture the whole loop in one CUDA graph
    cache_dir: str | None = None  # where optimized graphs / engines are cached
    feature_cache: bool = False  # also open the feature-cache graphs (the plan's calls == 2 rows)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")


class Backend:
    """Base class. Subclasses set `name`, implement `open` and `__call__` (host) or `_run` (device)."""

    name: ClassVar[str] = "base"
    device: ClassVar[str] = "cpu"
    artifact: ClassVar[ArtifactKind] = "bundle"
    info: dict[str, Any]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when usable on this machine, else one line saying what is missing and how to fix it."""
        return None

    @classmethod
    def open(cls, artifact: Any, batch: int, options: BackendOptions) -> Backend:
        """Open on a `Bundle` (artifact = "bundle") or an `nn.Module` (artifact = "module")."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        """out = f(x, t, *cond): the conditioning inputs the model declares, in spec order."""
        raise NotImplementedError(f"backend {self.name} has no host denoiser call")

    def cached(self, x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        """A feature-cache row: the shallow graph on the deep feature of the last full call."""
        raise ConfigError(f"backend {self.name!r} does not run feature caching; use --backend ort or openvino")

    def sample(
        self,
        plan: SamplingPlan,
        x_init: np.ndarray,
        *,
        noise: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        progress: ProgressFn | None = None,
        allow_nonfinite: bool = False,
        guidance: Guidance | None = None,
        edit: Edit | None = None,
    ) -> np.ndarray:
        """Run the whole reverse loop (same contract as `runtime.loop.sample_loop`).

        `guidance`: the conditioning of a conditional model and how to guide it (`runtime.guidance`;
        the backend must be open at `guidance.calls_batch(B)`); `edit`: the image to start from
        and the known region (`ddpm_rt.editing`). Raises `NonFiniteError` naming the step where
        NaN/inf first showed, unless `allow_nonfinite`.
        """
        if plan.cached_calls:
            if not self.host_loop and getattr(getattr(self, "loop", None), "shallow", None) is None:
                raise ConfigError(f"backend {self.name!r} does not run feature caching yet; use --backend ort "
                                  "or openvino, or drop --cache-interval")
            if guidance is not None:
                raise ConfigError("feature caching does not run with guidance yet; drop --cache-interval")
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf are reported by the guard, by step
            out = self._run(plan, x_init, noise, rng, progress, allow_nonfinite, guidance, edit)
        if not allow_nonfinite:
            check_finite(out, plan.steps, self.name)
        return out

    def _run(self, plan: SamplingPlan, x_init: np.ndarray, noise: np.ndarray | None,
             rng: np.random.Generator | None, progress: ProgressFn | None,
             allow_nonfinite: bool, guidance: Guidance | None = None, edit: Edit | None = None) -> np.ndarray:
        """The host loop over ``self(x, t)``, guarded at a bounded number of steps."""
        model: ModelFn = self
        if guidance is not None:
            model = GuidedModel(self, guidance, x_init.shape[0], tuple(x_init.shape[1:]))
        shallow: ModelFn | None = self.cached if plan.cached_calls else None
        if not allow_nonfinite:
            check = FiniteCheck(model, plan.model_calls, self.name)
            model, shallow = check, (check.also(shallow) if shallow is not None else None)
        return sample_loop(model, plan, x_init, noise=noise, rng=rng, progress=progress, edit=edit, shallow=shallow)

    @property
    def host_loop(self) -> bool:
        """True when the backend runs the shared host loop (its calls can be timed one by one)."""
        return type(self)._run is Backend._run

    def close(self) -> None:
        pass

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
