"""One sampling run, as `ddpm-rt sample` (and the Python API) does it: the backend chosen and opened
once on its artifact, the conditioning turned into `Guidance` (the CFG halves as one call of 2B or
two of B, measured), then the batch sampled in chunks with one noise stream.

    run = open_run(source, "auto", chunk=64, cond={"class_labels": labels}, guidance_scale=3.0)
    with run:
        samples = run.sample(plan, x_init, rng=rng, edit=edit)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ddpm_rt.editing import Edit
from ddpm_rt.errors import ConfigError
from ddpm_rt.fsutil import LogFn
from ddpm_rt.plan import SamplingPlan
from ddpm_rt.prepare import Choice, artifact_for, choose_backend
from ddpm_rt.registry import REGISTRY, open_backend
from ddpm_rt.runtime.backend import Backend, BackendOptions
from ddpm_rt.runtime.guidance import Guidance, make_guidance
from ddpm_rt.sources.source import ModelSource
from ddpm_rt.spec import DiffusionSpec

ProgressFn = Callable[[int, int], None]


@dataclass
class SamplingRun:
    """An open backend for one source, with the spec its artifact carries and the run's guidance."""

    source: ModelSource
    choice: Choice
    spec: DiffusionSpec
    backend: Backend
    chunk: int
    guidance: Guidance | None = None  # for the whole batch (sliced per chunk)
    notes: dict[str, Any] = field(default_factory=dict)  # what was decided and why (reported by sample)

    @property
    def name(self) -> str:
        return self.choice.name

    def sample(self, plan: SamplingPlan, x_init: np.ndarray, *, rng: np.random.Generator | None = None,
               noise: np.ndarray | None = None, edit: Edit | None = None, allow_nonfinite: bool = False,
               progress: ProgressFn | None = None) -> np.ndarray:
        """All of `x_init` in chunks of at most `chunk`, one after another (one rng stream)."""
        batch = x_init.shape[0]
        out = np.empty_like(x_init)
        for lo in range(0, batch, self.chunk):
            hi = min(batch, lo + self.chunk)
            part = self.backend.sample(
                plan, x_init[lo:hi], rng=rng, noise=None if noise is None else noise[:, lo:hi],
                allow_nonfinite=allow_nonfinite,
                guidance=None if self.guidance is None else self.guidance.take(lo, hi),
                edit=None if edit is None else edit.take(lo, hi),
                progress=None if progress is None else
                (lambda i, n, lo=lo, hi=hi: progress(lo * n + (hi - lo) * i, batch * n)))
            out[lo:hi] = part
        return out

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> SamplingRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_run(source: ModelSource, backend: str = "auto", *, chunk: int, batch: int | None = None,
             precision: str | None = None, threads: int | None = None, allow_inexact: bool = False,
             cuda_graph: bool = True, cond: Mapping[str, Any] | None = None, guidance_scale: float | None = None,
             guidance_rescale: float = 0.0, classifier_scale: float = 0.0, guidance_mode: str = "auto",
             calls: int | None = None, log: LogFn | None = None, feature_cache: bool = False) -> SamplingRun:
    """Choose (`auto`: measured, guarded) and open the backend for `source`; build the run's guidance.

    `cond` holds the conditioning of all `batch` samples (a conditional model needs it); the
    backend is opened at `chunk`, or `2·chunk` when the CFG halves run as one call. `calls` (the
    plan's model calls per chunk) lets `auto` weigh opening costs for short runs. `feature_cache`:
    also open the bundle's feature-cache graphs (a plan with cached rows; ort and openvino only).
    """
    batch = batch or chunk
    choice = choose_backend(backend, source, log=log, batch=chunk, precision=precision, threads=threads,
                            allow_inexact=allow_inexact, calls=None if calls is None else calls * -(-batch // chunk))
    artifact = choice.bundle or artifact_for(choice.name, source, log=log)
    spec = getattr(artifact, "spec", source.spec)  # a bundle carries its own spec in its manifest
    if feature_cache and choice.name not in ("ort", "openvino", "torch-cuda"):
        raise ConfigError(f"feature caching (--cache-interval) runs on --backend ort, openvino or torch-cuda, "
                          f"not {choice.name}")
    extra: dict[str, Any] = {}
    if feature_cache and choice.name == "torch-cuda":  # the module artifact, cut at the bundle's branch 0
        from ddpm_rt.exporter.feature_cache import split_modules

        extra["feature_split"] = split_modules(artifact, 0)
    options = BackendOptions(threads=threads, precision=choice.precision, cuda_graph=cuda_graph,
                             feature_cache=feature_cache, extra=extra)
    notes: dict[str, Any] = {}
    guidance = None
    if spec.conditioning or (classifier_scale and cond is not None):  # classifier guidance needs no class input
        if cond is None:
            raise ConfigError("this model is conditional: give its conditioning (--class/--classes/--labels)")
        scale = spec.default_guidance if guidance_scale is None else guidance_scale
        knobs: dict[str, Any] = {"scale": scale, "rescale": guidance_rescale}
        if classifier_scale:
            knobs.update(_classifier(artifact, spec, choice, classifier_scale, chunk, options))
            if spec.clip is not None:
                # The guided x̂0 is not clipped: at high noise the guidance moves x̂0 by
                # s·(1 − abar)/sqrt(abar)·∇ (×158 at t = 999), and clipping turns that into saturated
                # samples (digits, DDIM 50, s = 2: 58% of the class asked for with the clip, 93% without).
                spec = replace(spec, clip=None)
                notes["x0_clip"] = "off (classifier guidance)"
        probe = make_guidance(spec.conditioning, cond, batch, **knobs)
        mode = guidance_mode
        if mode == "auto":
            mode = "batched"
            if probe.doubled and REGISTRY[choice.name].artifact == "bundle" and not REGISTRY[choice.name].gpu:
                from ddpm_rt.runtime import cfg_mode

                mode, record = cfg_mode.choose_mode(
                    artifact, choice.name, options, chunk,
                    lambda b: open_backend(choice.name, artifact, b, options), log=log)
                notes["guidance_mode"] = record
        guidance = make_guidance(spec.conditioning, cond, batch, **knobs, mode=mode)
    elif classifier_scale:
        raise ConfigError("classifier guidance steers toward a class: give --class, --classes or --labels")
    elif cond is not None or (guidance_scale not in (None, 1.0)):
        raise ConfigError("this model is unconditional: drop --class/--classes/--labels/--guidance")
    open_batch = guidance.calls_batch(chunk) if guidance is not None else chunk
    be = open_backend(choice.name, artifact, open_batch, options)
    return SamplingRun(source, choice, spec, be, chunk, guidance, notes)


def _classifier(artifact: Any, spec: DiffusionSpec, choice: Choice, scale: float, chunk: int,
                options: BackendOptions) -> dict[str, Any]:
    """Classifier guidance's knobs: the bundle's gradient graph on ONNX Runtime, and sqrt(1 - abar)."""
    from ddpm_rt.runtime.classifier import classifier_labels, open_classifier
    from ddpm_rt.schedule import alphas_cumprod

    if spec.prediction_type != "epsilon" or spec.schedule.family != "vp":
        raise ConfigError("classifier guidance needs an epsilon-prediction VP model; use --guidance (CFG)")
    if REGISTRY[choice.name].gpu or not hasattr(artifact, "manifest"):
        raise ConfigError("classifier guidance reads the bundle's classifier graph on the host backends: "
                          "use --backend ort or openvino (the device loop runs classifier-free guidance only)")
    return {"classifier": open_classifier(artifact, chunk, options), "classifier_scale": scale,
            "classifier_input": classifier_labels(artifact),
            "noise_std": np.sqrt(1.0 - alphas_cumprod(spec.schedule)).astype(np.float32)}
