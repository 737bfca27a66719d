"""Per-sample noise: sample i's x_T and per-step noise come from its own counter-based stream.

Stream i is Philox-4x64 keyed by the 128-bit key (seed, i), counter from 0. It is drawn in a
fixed order: x_T first, then one draw of one sample's shape at every step with sigma > 0.
Nothing about a sample depends on which batch, shard, worker or order it ran in. An edit uses
the same stream: x_T is the z of the noised image x_start = ix·image + in·z, and with a mask
the rows whose known region is still noisy draw too (`SamplingPlan.noise_rows(masked=True)`).

`BatchNoise` serves a micro-batch of such streams through the two interfaces the loops use:
``standard_normal(dtype=np.float32, out=z)`` (the host loop's in-place draw: row b of ``z``
from stream b, no allocation) and `step_noise` (the ``noise=`` array of device loops).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ddpm_rt.errors import ConfigError
from ddpm_rt.plan import SamplingPlan

SEED_SCHEME = "philox4x64 key=(seed, sample index); x_T, then one draw per step with sigma > 0"
_MAX_U64 = (1 << 64) - 1


def check_seed(seed: int) -> int:
    if not 0 <= seed <= _MAX_U64:
        raise ConfigError(f"--seed must be in 0..2**64-1 (it keys a Philox stream), got {seed}")
    return int(seed)


def sample_generator(seed: int, index: int) -> np.random.Generator:
    """The generator of sample `index` under `seed` (a fresh stream, counter at 0)."""
    key = np.array([check_seed(seed), index], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=key))


class BatchNoise:
    """The noise streams of samples `indices`, one row each, drawn in the scheme's order."""

    def __init__(self, seed: int, indices: Sequence[int], sample_shape: tuple[int, ...]) -> None:
        self.sample_shape = tuple(sample_shape)
        self._gens = [sample_generator(seed, int(i)) for i in indices]

    @property
    def batch(self) -> int:
        return len(self._gens)

    def initial(self) -> np.ndarray:
        """x_T, float32 [B, *sample_shape] (call once, before any step draw)."""
        x = np.empty((self.batch, *self.sample_shape), dtype=np.float32)
        return self.standard_normal(dtype=np.float32, out=x)

    def standard_normal(
        self, size: tuple[int, ...] | None = None, dtype: type = np.float32, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Generator-compatible draw: row b of the [B, ...] result from stream b."""
        if out is None:
            out = np.empty(size if size is not None else (self.batch, *self.sample_shape), dtype=dtype)
        if out.shape != (self.batch, *self.sample_shape):
            raise ConfigError(
                f"noise for {self.batch} samples of shape {self.sample_shape} cannot fill {out.shape}"
            )
        for row, gen in zip(out, self._gens, strict=True):  # rows of a C-contiguous array are contiguous
            gen.standard_normal(dtype=dtype, out=row)
        return out

    def step_noise(self, plan: SamplingPlan, masked: bool = False) -> np.ndarray:
        """Per-step noise float32 [N, B, ...] for device loops: the same values the in-place draws give
        (`masked`: an inpainting run, whose known region draws at more rows)."""
        z = np.zeros((plan.steps, self.batch, *self.sample_shape), dtype=np.float32)
        for i in np.flatnonzero(plan.noise_rows(masked)):
            self.standard_normal(dtype=np.float32, out=z[i])
        return z
