"""Editing inputs: the image a run starts from (SDEdit / img2img strength) and the known region
kept while the rest is generated (inpainting, RePaint). Numpy (and Pillow for PNG files) only.

Conventions, stated once:

* strength s ∈ (0, 1] as diffusers' img2img pipelines: of N steps the last
  ``min(int(N·s), N)`` run, i.e. the plan starts at ``start = N - min(int(N·s), N)``; a strength
  that would run no step is refused (no silent clamp).
* images are in the model's data range (manifest `data_range`); a PNG is read as 8-bit and mapped
  linearly onto it, never resized (a size that differs from the model's is refused).
* masks are binary, 1 = known (kept), 0 = generated: diffusers' RePaint convention. A mask made
  the other way round (Stable Diffusion's inpainting pipelines: white = the region to repaint) is
  read with ``mask_means="generate"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddpm_rt.errors import ConfigError

MASK_MEANINGS = ("keep", "generate")  # what a 1 (white) in the mask file means


def start_for_strength(steps: int, strength: float) -> int:
    """diffusers' img2img cut: the first step run of `steps` at `strength` (one-line error if none runs)."""
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"--strength must be in (0, 1], got {strength:g}")
    init = min(int(steps * strength), steps)
    if init < 1:
        raise ConfigError(f"--strength {strength:g} with --steps {steps} runs no step (int({steps}·{strength:g}) = 0); "
                          f"raise the strength to >= {1 / steps:.3g} or the steps to >= {int(np.ceil(1 / strength))}")
    return steps - init


@dataclass(frozen=True)
class Edit:
    """The image a run starts from or keeps (float32, the model's data range) and the known-region
    mask (bool, True = known), each one sample or one per sample."""

    image: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image is None and self.mask is None:
            raise ConfigError("an edit needs an image (--init) and/or a mask (--mask)")
        if self.mask is not None and self.image is None:
            raise ConfigError("a mask needs the image whose known region it keeps: give --init IMAGE too")

    def arrays(self, shape: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(image float32, mask bool) as C-contiguous arrays of the batch `shape` (copied once)."""
        def full(a: np.ndarray | None, dtype: type, what: str) -> np.ndarray | None:
            if a is None:
                return None
            try:
                return np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=dtype), shape))
            except ValueError:
                raise ConfigError(f"the {what} has shape {list(np.shape(a))}, which does not fit the batch "
                                  f"{list(shape)}: give one sample or one per sample") from None
        return full(self.image, np.float32, "image"), full(self.mask, np.bool_, "mask")

    def take(self, lo: int, hi: int) -> Edit:
        """The edit of samples lo..hi-1 of a batch (arrays made by `make_edit` have a batch axis)."""
        return Edit(None if self.image is None else self.image[lo:hi],
                    None if self.mask is None else self.mask[lo:hi])


def make_edit(sample_shape: tuple[int, ...], data_range: tuple[float, float], batch: int,
              image: np.ndarray | None, mask: np.ndarray | None = None, mask_means: str = "keep") -> Edit:
    """Check an image (one sample or [batch, ...]) and a mask against the model; one-line errors."""
    if mask_means not in MASK_MEANINGS:
        raise ConfigError(f"--mask-means must be one of {', '.join(MASK_MEANINGS)}, got {mask_means!r}")
    img = None if image is None else _per_sample(np.asarray(image), sample_shape, batch, "--init image")
    if img is not None:
        if img.dtype.kind not in "iuf":
            raise ConfigError(f"--init image must hold numbers, got dtype {img.dtype}")
        img = img.astype(np.float32)
        lo, hi = data_range
        if not np.all(np.isfinite(img)):
            raise ConfigError("--init image has NaN or inf values")
        tol = 1e-6 * max(1.0, hi - lo)
        if img.min() < lo - tol or img.max() > hi + tol:
            raise ConfigError(f"--init image values span [{img.min():.4g}, {img.max():.4g}], outside the model's "
                              f"data range [{lo:g}, {hi:g}]; rescale it (a PNG is mapped automatically)")
    m = None
    if mask is not None:
        raw = np.asarray(mask)
        if raw.ndim == len(sample_shape) - 1 and len(sample_shape) == 3:  # [H, W]: the same for every channel
            raw = raw[None]
        if raw.ndim == len(sample_shape) and len(sample_shape) == 3 and raw.shape[0] == 1:
            raw = np.broadcast_to(raw, sample_shape)
        raw = _per_sample(raw, sample_shape, batch, "--mask")
        values = np.unique(raw)
        if raw.dtype != np.bool_ and not set(values.tolist()) <= {0, 1}:
            raise ConfigError(f"--mask must be binary (0 and 1), got values {values[:4].tolist()}"
                              f"{' …' if values.size > 4 else ''}; threshold it first")
        m = raw.astype(np.bool_)
        if mask_means == "generate":
            m = ~m
    shape = (batch, *sample_shape)  # one sample given: a broadcast view, no copy
    return Edit(None if img is None else np.broadcast_to(img, shape),
                None if m is None else np.broadcast_to(m, shape))


def _per_sample(a: np.ndarray, sample_shape: tuple[int, ...], batch: int, what: str) -> np.ndarray:
    """`a` as [sample_shape] (one for every sample) or [batch, *sample_shape]; refuses anything else."""
    if a.shape == tuple(sample_shape) or a.shape == (batch, *sample_shape):
        return a
    raise ConfigError(f"{what} has shape {list(a.shape)}; this model takes {list(sample_shape)} "
                      f"(or [{batch}, {', '.join(map(str, sample_shape))}] for one per sample) — "
                      "resize it yourself, it is never resized silently")


def read_array(path: Path, sample_shape: tuple[int, ...], data_range: tuple[float, float],
               kind: str) -> np.ndarray:
    """An image (`kind` = "image": mapped onto the data range) or a mask (`kind` = "mask": 0/1)
    from a .npy or .png file, as stored (shape checks are `make_edit`'s)."""
    path = Path(path)
    flag = "--init" if kind == "image" else "--mask"
    if not path.is_file():
        raise ConfigError(f"{flag} {path}: file not found")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{flag} {path}: not a readable .npy file ({e})") from None
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{flag} {path}: use a .png or .npy file")
    if len(sample_shape) != 3:
        raise ConfigError(f"{flag} {path}: this model's samples are vectors {list(sample_shape)}; give a .npy file")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            channels = sample_shape[0]
            mode = "L" if (kind == "mask" or channels == 1) else "RGB"
            pixels = np.asarray(im.convert(mode))
    except (OSError, UnidentifiedImageError) as e:
        raise ConfigError(f"{flag} {path}: not a readable PNG ({e})") from None
    if pixels.shape[:2] != tuple(sample_shape[1:]):
        raise ConfigError(f"{flag} {path} is {pixels.shape[1]}×{pixels.shape[0]} pixels; this model takes "
                          f"{sample_shape[2]}×{sample_shape[1]} — resize it yourself, it is never resized silently")
    arr = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)  # (C, H, W)
    if kind == "mask":
        values = np.unique(arr)
        if not set(values.tolist()) <= {0, 255}:
            raise ConfigError(f"--mask {path} is not binary: it has grey levels {values[:4].tolist()}…; "
                              "use pure black (0) and white (255)")
        return (arr[:1] > 127).astype(np.uint8)  # (1, H, W)
    lo, hi = data_range
    return (arr.astype(np.float32) / 255.0 * (hi - lo) + lo).astype(np.float32)
