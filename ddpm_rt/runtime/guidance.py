"""Guidance for conditional denoisers, as a model wrapper ``(x, t) -> out``: the loop stays the same.

Classifier-free guidance (Ho & Salimans 2022), with c the output for the labels and u the output
for the null labels::

    out = u + w·(c − u)                          w = 1: c (one call); w = 0: u (one call)

Guidance rescale (Lin et al. 2023, §3.4; diffusers' ``rescale_noise_cfg``), per sample::

    out = φ·out·std(c)/std(out) + (1 − φ)·out

Classifier guidance (Dhariwal & Nichol 2021, eq. 14 in epsilon form), after CFG::

    out = out − s·sqrt(1 − abar_t)·∇x log p(y | x_t, t)

The classifier's labels y are the denoiser's class input when it has one; an unconditional
denoiser is guided too (`classifier_input` names the classifier's label input, the labels go to
the classifier only and the denoiser is called with x and t).

The two CFG halves run as one call of batch 2B (x and t repeated, the conditioning inputs
[labels; null] filled once) or as two calls of batch B (the conditioning buffer refilled in
place between them); `mode` says which, the command layer measures which is faster
(`runtime.cfg_mode`). Every buffer is allocated when the wrapper is made; a call allocates no
array (rescale's per-sample standard deviations aside: a few floats).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ddpm_rt.conditioning import CondInput, check_conditioning
from ddpm_rt.errors import ConfigError

GUIDANCE_MODES = ("batched", "split")
CondModelFn = Callable[..., np.ndarray]  # (x, t, *cond) -> out
GradientFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (x, t, labels) -> ∇x log p(y|x,t)


@dataclass(frozen=True)
class Guidance:
    """What a conditional model is conditioned on, and how it is guided.

    `cond` holds one checked array per conditioning input, [B, ...] (`ddpm_rt.conditioning`).
    """

    inputs: tuple[CondInput, ...]
    cond: Mapping[str, np.ndarray]
    scale: float = 1.0  # CFG w
    rescale: float = 0.0  # φ in [0, 1]
    mode: str = "batched"  # batched | split: how the two CFG halves run
    classifier: GradientFn | None = None  # classifier guidance: ∇x log p(y | x_t, t)
    classifier_scale: float = 0.0  # s
    noise_std: np.ndarray | None = field(default=None, repr=False)  # float32 [T]: sqrt(1 - abar[t])
    classifier_input: CondInput | None = None  # the classifier's label input (its labels in `cond`)

    def __post_init__(self) -> None:
        if self.scale < 0 or not np.isfinite(self.scale):
            raise ConfigError(f"--guidance must be >= 0, got {self.scale:g}")
        if not 0.0 <= self.rescale <= 1.0:
            raise ConfigError(f"--guidance-rescale must be in [0, 1], got {self.rescale:g}")
        if self.mode not in GUIDANCE_MODES:
            raise ConfigError(f"guidance mode must be one of {', '.join(GUIDANCE_MODES)}, got {self.mode!r}")
        if self.scale != 1.0:
            for c in self.inputs:
                c.null_values(1)  # refuses a model that learned no null input
        if self.classifier_scale and (self.classifier is None or self.noise_std is None):
            raise ConfigError("--classifier-scale needs the bundle's noise-aware classifier (classifier_grad.onnx)")
        if self.classifier_scale and self.classifier_labels_name not in self.cond:
            raise ConfigError("classifier guidance steers toward a class: give --class, --classes or --labels")

    @property
    def classifier_labels_name(self) -> str | None:
        """Which entry of `cond` holds the classifier's labels: the denoiser's class input, else the classifier's."""
        own = next((c.name for c in self.inputs if c.kind == "class"), None)
        return own or (None if self.classifier_input is None else self.classifier_input.name)

    @property
    def doubled(self) -> bool:
        """Whether CFG needs both halves (0 < w != 1)."""
        return self.scale not in (0.0, 1.0)

    def calls_batch(self, batch: int) -> int:
        """The batch the backend must be opened at for `batch` samples."""
        return 2 * batch if self.doubled and self.mode == "batched" else batch

    def take(self, lo: int, hi: int) -> Guidance:
        """The guidance of samples lo..hi-1 (a batch run in chunks)."""
        return replace(self, cond={k: v[lo:hi] for k, v in self.cond.items()})


def make_guidance(inputs: tuple[CondInput, ...], cond: Mapping[str, object] | None, batch: int,
                  **knobs: object) -> Guidance:
    """Check the conditioning of `batch` samples against the model's inputs; `knobs` as `Guidance`."""
    labels = knobs.get("classifier_input")
    if not inputs:
        if knobs.get("classifier_scale") and isinstance(labels, CondInput) and knobs.get("scale", 1.0) == 1.0:
            # classifier guidance of an unconditional denoiser: the labels are the classifier's only
            return Guidance((), check_conditioning((labels,), cond, batch), **knobs)  # type: ignore[arg-type]
        if cond or knobs.get("scale", 1.0) != 1.0 or knobs.get("classifier_scale"):
            raise ConfigError("this model is unconditional: drop --class/--labels/--guidance "
                              "(or give --classifier-scale with a bundle that carries a classifier)")
        raise ConfigError("an unconditional model needs no guidance")
    return Guidance(tuple(inputs), check_conditioning(inputs, cond, batch), **knobs)  # type: ignore[arg-type]


class GuidedModel:
    """``(x, t) -> out`` for the loop, around a conditional host call ``(x, t, *cond) -> out``."""

    def __init__(self, model: CondModelFn, guidance: Guidance, batch: int,
                 sample_shape: tuple[int, ...]) -> None:
        g = guidance
        self.model, self.g = model, g
        shape = (batch, *sample_shape)
        cond = [np.ascontiguousarray(g.cond[c.name]) for c in g.inputs]
        null = [c.null_values(batch) for c in g.inputs] if g.scale != 1.0 else []
        if g.scale == 1.0:  # plain conditional sampling: one call on the labels
            self.cond = cond
        elif g.scale == 0.0:  # unconditional: one call on the null inputs
            self.cond = null
        elif g.mode == "batched":  # one call of 2B: [labels; null], x and t repeated into 2B buffers
            self.x2 = np.zeros((2 * batch, *sample_shape), np.float32)
            self.t2 = np.zeros((2 * batch,), np.float32)
            self.cond = [np.ascontiguousarray(np.concatenate([c, n])) for c, n in zip(cond, null, strict=True)]
        else:  # two calls of B through one conditioning buffer per input, refilled in place
            self.cond = [c.copy() for c in cond]
            self._labels, self._null = cond, null
            self.c_out = np.zeros(shape, np.float32)
        self.out = np.zeros(shape, np.float32)  # the guided output (B, ...)
        self.batch = batch
        self._axes = tuple(range(1, len(shape)))
        if g.classifier_scale:
            self.labels = np.ascontiguousarray(g.cond[g.classifier_labels_name])  # int64 (B,)
            self.scaled = np.zeros(shape, np.float32)

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        g, b = self.g, self.batch
        if not g.doubled:
            out = self.model(x, t, *self.cond)
            if not g.classifier_scale:
                return out
            np.copyto(self.out, out)
        else:
            if g.mode == "batched":
                self.x2[:b] = x
                self.x2[b:] = x
                self.t2[:b] = t
                self.t2[b:] = t
                both = self.model(self.x2, self.t2, *self.cond)  # (2B, ...)
                c, u = both[:b], both[b:]
            else:
                for buf, src in zip(self.cond, self._labels, strict=True):
                    np.copyto(buf, src)
                np.copyto(self.c_out, self.model(x, t, *self.cond))
                for buf, src in zip(self.cond, self._null, strict=True):
                    np.copyto(buf, src)
                c, u = self.c_out, self.model(x, t, *self.cond)
            # out = u + w·(c − u), in the order diffusers' pipelines compute it
            np.subtract(c, u, out=self.out)
            np.multiply(self.out, np.float32(g.scale), out=self.out)
            np.add(self.out, u, out=self.out)
            if g.rescale:
                # per sample: out·std(c)/std(out), mixed by φ (the std's ddof cancels in the ratio)
                factor = (np.std(c, axis=self._axes, keepdims=True)
                          / np.std(self.out, axis=self._axes, keepdims=True)).astype(np.float32)
                mix = np.float32(g.rescale) * factor + np.float32(1.0 - g.rescale)
                np.multiply(self.out, mix, out=self.out)
        if g.classifier_scale:
            # eps − s·sqrt(1 − abar_t)·∇x log p(y | x_t, t)   (t: the train index of this step)
            assert g.classifier is not None and g.noise_std is not None
            grad = g.classifier(x, t, self.labels)
            scale = np.float32(g.classifier_scale) * g.noise_std[int(t[0])]
            np.multiply(grad, scale, out=self.scaled)
            np.subtract(self.out, self.scaled, out=self.out)
        return self.out
