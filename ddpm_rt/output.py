"""Writing samples: .npy (raw, model data range) or .png (image grid, or scatter for 2-D).

Pictures are drawn with Pillow alone (no matplotlib): the runtime's only imaging dependency.
Everything that can be checked before sampling is checked by `check_output_path` and
`check_memory`, so a bad `--out` or an impossible `--batch` fails in milliseconds.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ddpm_rt.errors import ConfigError
from ddpm_rt.fsutil import atomic_write
from ddpm_rt.machine import MB, available_bytes
from ddpm_rt.spec import DiffusionSpec

SUFFIXES = (".png", ".npy")
GRID_SCALE = 4  # each pixel of an image sample becomes 4x4 in the grid
SCATTER_PX = 500
MAX_GRID_PIXELS = 200_000_000  # a bigger PNG grid is refused: write .npy instead


def check_output_path(path: Path) -> None:
    """Suffix, not a directory, parent creatable and writable: all before any model work."""
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory; give a file path ending in .png or .npy")
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"--out must end in .png or .npy, got {path.name!r}")
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists():  # the nearest existing ancestor decides whether we can create it
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--out {path}: {probe} is a file, not a directory; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {path}: {probe} is not writable; choose a writable path")


def _grid_shape(b: int, h: int, w: int, pad: int = 1, cols: int | None = None) -> tuple[int, int, int, int]:
    cols = cols or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    return rows, cols, rows * (h + pad) + pad, cols * (w + pad) + pad


def check_memory(spec: DiffusionSpec, batch: int, chunk: int, out: Path) -> None:
    """Refuse (one line, with the figure) a batch whose arrays cannot fit in the memory available now.

    Counted: x_T and the result (batch × sample), the running chunk's loop buffers and the
    PNG grid when one is written. Model activations come on top, per chunk (`--chunk`).
    """
    per_sample = int(np.prod(spec.sample_shape)) * 4
    need = 2 * batch * per_sample + 6 * chunk * per_sample
    if out.suffix.lower() == ".png" and spec.is_image:
        c, h, w = spec.sample_shape
        _, _, gh, gw = _grid_shape(batch, h, w)
        pixels = gh * gw * GRID_SCALE**2
        if pixels > MAX_GRID_PIXELS:
            raise ConfigError(f"a PNG grid of {batch} samples would be {pixels / 1e6:.0f} megapixels; "
                              "write --out FILE.npy, or lower --batch")
        need += pixels * c * 9  # float64 grid + uint8 copy
    have = available_bytes()
    if have is not None and need > 0.8 * have:
        fit = max(1, int(batch * 0.8 * have / need))
        raise ConfigError(f"--batch {batch} needs about {need / MB:.0f} MB for its samples alone, but only "
                          f"{have / MB:.0f} MB are available; lower --batch (about {fit} fits)")


def image_grid(samples: np.ndarray, data_range: tuple[float, float], scale: int = GRID_SCALE,
               cols: int | None = None) -> np.ndarray:
    """[B, C, H, W] in data_range -> uint8 [rows*H*scale, cols*W*scale, C] grid with 1-px gutters
    (`cols` per row; default: a square-ish grid)."""
    lo, hi = data_range
    x = np.clip((samples - lo) / (hi - lo), 0.0, 1.0)
    b, c, h, w = x.shape
    rows, cols, gh, gw = _grid_shape(b, h, w, cols=cols)
    pad = 1
    grid = np.full((gh, gw, c), 0.5, dtype=np.float64)
    for i in range(b):
        r, q = divmod(i, cols)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = x[i].transpose(1, 2, 0)
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    return (grid * 255).round().astype(np.uint8)


def scatter_image(points: np.ndarray, data_range: tuple[float, float], size: int = SCATTER_PX,
                  title: str = "") -> np.ndarray:
    """2-D points -> uint8 [size, size, 3] scatter (axes at 1.2 × the data range, y up)."""
    from PIL import Image, ImageDraw

    lo, hi = data_range[0] * 1.2, data_range[1] * 1.2
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    mid = (0 - lo) / (hi - lo) * (size - 1)
    draw.line([(0, size - 1 - mid), (size - 1, size - 1 - mid)], fill=(220, 220, 220))
    draw.line([(mid, 0), (mid, size - 1)], fill=(220, 220, 220))
    finite = points[np.all(np.isfinite(points), axis=1)]
    px = (finite - lo) / (hi - lo) * (size - 1)
    for x, y in px:
        if 0 <= x < size and 0 <= y < size:
            draw.ellipse([x - 1.5, size - 1 - y - 1.5, x + 1.5, size - 1 - y + 1.5], fill=(31, 119, 180))
    if title:
        draw.text((4, 4), title, fill=(0, 0, 0))
    return np.asarray(img)


def save_samples(samples: np.ndarray, spec: DiffusionSpec, path: Path, title: str = "", *,
                 cols: int | None = None, panels: tuple[tuple[str, np.ndarray], ...] = ()) -> Path:
    """Write `samples` ([B, C, H, W] or [B, D], model data range) to .png or .npy atomically.

    The caller checked the path first (`check_output_path`). A PNG of image samples is a grid of
    `cols` per row; `panels` (e.g. the input image and the mask of an edit, each [B, ...] in the
    data range) are drawn as grids of their own to the left of the result, in order.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        def write_npy(p: Path) -> None:
            with p.open("wb") as f:
                np.save(f, samples.astype(np.float32))

        atomic_write(path, write_npy)
        return path
    from PIL import Image

    if spec.is_image:
        grids = [image_grid(a, spec.data_range, cols=cols) for _, a in (*panels, ("result", samples))]
        gap = np.full((grids[0].shape[0], 3 * GRID_SCALE, grids[0].shape[2]), 255, np.uint8)
        grid = np.concatenate([part for g in grids for part in (g, gap)][:-1], axis=1)
        img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    else:
        img = Image.fromarray(scatter_image(samples[:, :2], spec.data_range, title=title))
    atomic_write(path, lambda p: img.save(p, format="PNG"))
    return path
