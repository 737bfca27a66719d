"""Writing samples: .npy (raw, model data range) or .png (image grid, or scatter for 2-D)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ddpm_rt.errors import ConfigError
from ddpm_rt.fsutil import atomic_write
from ddpm_rt.spec import DiffusionSpec

SUFFIXES = (".png", ".npy")


def check_output_path(path: Path) -> None:
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"--out must end in .png or .npy, got {path.name!r}")


def image_grid(samples: np.ndarray, data_range: tuple[float, float], scale: int = 4) -> np.ndarray:
    """[B, C, H, W] in data_range -> uint8 [rows*H*scale, cols*W*scale, C] grid with 1-px gutters."""
    lo, hi = data_range
    x = np.clip((samples - lo) / (hi - lo), 0.0, 1.0)
    b, c, h, w = x.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    pad = 1
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.float64) * 0.5
    for i in range(b):
        r, q = divmod(i, cols)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = x[i].transpose(1, 2, 0)
    grid = np.kron(grid, np.ones((scale, scale, 1)))
    return (grid * 255).round().astype(np.uint8)


def _save_png(samples: np.ndarray, spec: DiffusionSpec, path: Path, title: str) -> None:
    if spec.is_image:
        from PIL import Image

        grid = image_grid(samples, spec.data_range)
        img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
        atomic_write(path, lambda p: img.save(p, format="PNG"))
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(samples[:, 0], samples[:, 1], s=4, alpha=0.6)
    lo, hi = spec.data_range
    ax.set_xlim(lo * 1.2, hi * 1.2)
    ax.set_ylim(lo * 1.2, hi * 1.2)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    atomic_write(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight"))
    plt.close(fig)


def save_samples(samples: np.ndarray, spec: DiffusionSpec, path: Path, title: str = "") -> Path:
    """Write `samples` ([B, C, H, W] or [B, D], model data range) to .png or .npy atomically."""
    path = Path(path)
    check_output_path(path)
    if path.suffix.lower() == ".npy":
        def write_npy(p: Path) -> None:
            with p.open("wb") as f:
                np.save(f, samples.astype(np.float32))

        atomic_write(path, write_npy)
    else:
        _save_png(samples, spec, path, title)
    return path
