"""The reverse loop on host (numpy) buffers, driven by any ``(x, t) -> model_out`` callable.

All buffers are allocated once before the first step; each step writes the
time input in place, calls the model and applies the plan's affine update with
numpy ``out=`` arguments, so the loop itself allocates nothing per step.

Plans that convert the output (clip, or multistep history; see `ddpm_rt.plan`) keep the
converted outputs d in a ring of H + 1 preallocated buffers: step i writes d_i into slot
``plan.ring_slots[i, 0]`` and reads d_{i-j} from ``plan.ring_slots[i, j]``. Slots are fixed per
step (nothing rotates), which is also how the device loop and the fused graphs index them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ddpm_rt.editing import Edit
from ddpm_rt.errors import ConfigError
from ddpm_rt.plan import SamplingPlan

ModelFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
ProgressFn = Callable[[int, int], None]


def initial_noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """x_T ~ N(0, I) as float32 (the same draw on every backend for a given rng state)."""
    return rng.standard_normal(shape, dtype=np.float32)


def sample_loop(
    model: ModelFn,
    plan: SamplingPlan,
    x_init: np.ndarray,
    *,
    noise: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    progress: ProgressFn | None = None,
    edit: Edit | None = None,
    shallow: ModelFn | None = None,
) -> np.ndarray:
    """Run every step of `plan` from `x_init` and return the final sample (a new array).

    Args:
        model: called as ``model(x, t)`` with x float32 [B, ...] and t float32 [B];
            it may return a buffer it reuses between calls (it is read before the next call).
        plan: the precomputed tables.
        x_init: the starting sample x_T, float32 [B, ...]; with an `edit` image, the noise z
            of x_start = ix·image + in·z (`plan.init`).
        noise: per-step noise, float32 [N, B, ...]; row i is used at step i when it draws noise
            (`plan.noise_rows`). If omitted, noise is drawn from `rng` (in place) at those steps only.
        rng: generator for the per-step noise (default: a fresh unseeded one).
        progress: called as ``progress(step_done, steps)`` after every step.
        edit: start from an image and/or keep a known region (`ddpm_rt.editing.Edit`).
        shallow: feature caching: called as ``shallow(x, t)`` on the plan's cached rows (calls == 2);
            it reuses the deep feature `model` kept at the last full row (`plan.with_feature_cache`).
    """
    if shallow is None and plan.cached_calls:
        raise ConfigError(f"the plan has {plan.cached_calls} feature-cache rows but no shallow model was given")
    x = np.array(x_init, dtype=np.float32, copy=True, order="C")  # (B, ...) the running sample
    batch = x.shape[0]
    if noise is not None and noise.shape != (plan.steps, *x.shape):
        raise ConfigError(
            f"per-step noise must have shape {(plan.steps, *x.shape)}, got {tuple(noise.shape)}"
        )
    image, mask = (None, None) if edit is None else edit.arrays(x.shape)
    draws = plan.noise_rows(masked=mask is not None)  # (N,) bool: rows that read z_i
    if noise is None and draws.any() and rng is None:
        rng = np.random.default_rng()
    t_buf = np.empty((batch,), dtype=np.float32)  # (B,)
    z = np.empty_like(x)  # per-step noise
    tmp = np.empty_like(x)
    known = np.empty_like(x) if mask is not None else None  # the known region of the current row
    if image is not None:  # x_start = ix·image + in·z: the image noised to the first row's level
        np.multiply(x, np.float32(plan.init[1]), out=x)
        np.multiply(image, np.float32(plan.init[0]), out=tmp)
        np.add(x, tmp, out=x)
    # ring of converted outputs d (H + 1 slots; one slot = the clipped x0^ of ddpm/ddim),
    # zeroed: slots not yet written are read with weight 0 and must be finite
    ring = list(np.zeros((plan.depth + 1, *x.shape), np.float32)) if plan.converts else []
    slots, hist = plan.ring_slots, plan.hist  # (N, H + 1) int64, (N, H) float32
    # clip bounds as float32 scalars, made once: np.minimum / np.maximum on them allocate nothing
    lo, hi = (np.float32(v) for v in (plan.clip if plan.clip is not None else (0.0, 0.0)))

    calls = plan.calls  # (N,) int8: 0 = an undo row (no model call), 1 = full, 2 = feature-cache row
    for i in range(plan.steps):
        zi = None
        if draws[i]:
            if noise is not None:
                zi = noise[i]
            else:
                assert rng is not None
                rng.standard_normal(dtype=np.float32, out=z)
                zi = z
        if calls[i] == 0:
            # RePaint undo row: x' = a·x + sigma·z, no model call
            np.multiply(x, plan.a[i], out=x)
            if zi is not None:
                np.multiply(zi, plan.sigma[i], out=tmp)
                np.add(x, tmp, out=x)
            if progress is not None:
                progress(i + 1, plan.steps)
            continue
        t_buf.fill(plan.timesteps[i])
        out = model(x, t_buf) if calls[i] == 1 else shallow(x, t_buf)  # type: ignore[misc]
        d = ring[slots[i, 0]] if ring else None
        if d is not None:
            # d_i = [clip](cx·x + co·out) before x is overwritten
            np.multiply(x, plan.cx[i], out=d)
            np.multiply(out, plan.co[i], out=tmp)
            np.add(d, tmp, out=d)
            if plan.clip is not None:
                np.minimum(d, hi, out=d)
                np.maximum(d, lo, out=d)
        # x_prev = a·x + b·out (+ p0·d_i + Σ_j hist_j·d_{i-j}) + sigma·z
        np.multiply(out, plan.b[i], out=tmp)
        np.multiply(x, plan.a[i], out=x)
        np.add(x, tmp, out=x)
        if d is not None:
            np.multiply(d, plan.p0[i], out=tmp)
            np.add(x, tmp, out=x)
            for j in range(1, plan.depth + 1):  # d_{i-j}, j = 1..H
                np.multiply(ring[slots[i, j]], hist[i, j - 1], out=tmp)
                np.add(x, tmp, out=x)
        if plan.sigma[i] > 0:
            assert zi is not None
            np.multiply(zi, plan.sigma[i], out=tmp)
            np.add(x, tmp, out=x)
        if mask is not None:
            # the known region: the image noised to this row's output level, from the row's own z
            np.multiply(image, plan.kx[i], out=known)
            if zi is not None:
                np.multiply(zi, plan.kn[i], out=tmp)
                np.add(known, tmp, out=known)
            np.copyto(x, known, where=mask)
        if progress is not None:
            progress(i + 1, plan.steps)
    return x
