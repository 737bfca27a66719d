"""The editing inputs of a sharded run: sample i starts from image i (SDEdit) and keeps its known
region (inpainting, RePaint).

`--init` is one image for every sample (a .png, or an .npy of one sample's shape) or one per
sample: an .npy stack [N, ...], or a directory of .png / .npy files read in sorted file-name
order (dot files ignored). `--mask` likewise: one for all, a stack, or a directory. Each image
and mask is checked as a single `--init` / `--mask` is (`ddpm_rt.editing`: size, channels, data
range; masks binary) and an error names the file or the stack row. Nothing here runs the model.

The run's identity records the sha256 of the checked arrays, so a resume with other inputs is
refused; the noise stays per sample (`ddpm_rt.shards.noise`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_rt.editing import Edit, make_edit, read_array
from ddpm_rt.errors import ConfigError

EditInput = Path | np.ndarray  # a file or directory, or the array itself (the Python API)


@dataclass(frozen=True)
class ShardEdit:
    """Checked editing inputs: one for all samples (a leading axis of 1) or one per sample."""

    image: np.ndarray  # float32 [1 or num, *sample_shape], the model's data range
    mask: np.ndarray | None = None  # bool [1 or num, *sample_shape], True = known

    def rows(self, first: int, size: int, num: int) -> Edit:
        """The edit of samples first..first+size-1 (slots past `num` repeat the last sample's)."""
        idx = np.minimum(np.arange(first, first + size), num - 1)

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else (a[:1] if a.shape[0] == 1 else a[idx])  # [1]: broadcast by Edit

        return Edit(take(self.image), take(self.mask))

    def identity(self) -> dict[str, Any]:
        """What a resume must agree on: the inputs' content (after checks and --mask-means)."""
        return {"image": _array_key(self.image),
                "mask": None if self.mask is None else _array_key(self.mask)}


def _array_key(a: np.ndarray) -> dict[str, Any]:
    h = hashlib.sha256(f"{a.dtype.str}|{list(a.shape)}|".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return {"sha256": h.hexdigest(), "count": int(a.shape[0])}


def shard_edit(sample_shape: tuple[int, ...], data_range: tuple[float, float], num: int, init: EditInput,
               mask: EditInput | None = None, mask_means: str = "keep") -> ShardEdit:
    """Read and check `init` (and `mask`) for a run of `num` samples; one-line errors, no model work."""
    sample_shape = tuple(sample_shape)
    image = _checked(_load(init, sample_shape, data_range, "image", num), "image", sample_shape, data_range,
                     num, mask_means, str(init) if isinstance(init, Path) else "array")
    m = None
    if mask is not None:
        m = _checked(_load(mask, sample_shape, data_range, "mask", num), "mask", sample_shape, data_range,
                     num, mask_means, str(mask) if isinstance(mask, Path) else "array")
    return ShardEdit(image, m)


def _load(source: EditInput, sample_shape: tuple[int, ...], data_range: tuple[float, float], kind: str,
          num: int) -> list[tuple[str, np.ndarray]] | np.ndarray:
    """A directory as [(file name, array)] (its count checked first), a file or array as it is."""
    if not isinstance(source, Path):
        return np.asarray(source)
    flag = "--init" if kind == "image" else "--mask"
    if not source.is_dir():
        return read_array(source, sample_shape, data_range, kind)
    entries = sorted(p for p in source.iterdir() if not p.name.startswith("."))
    other = [p.name for p in entries if not p.is_file() or p.suffix.lower() not in (".png", ".npy")]
    if other:
        raise ConfigError(f"{flag} {source}: {other[0]} is not a .png or .npy file; a directory of inputs "
                          "holds one .png or .npy per sample and nothing else")
    if len(entries) != num:
        raise ConfigError(f"{flag} {source} holds {len(entries)} files for --num {num}; give one per sample")
    return [(p.name, read_array(p, sample_shape, data_range, kind)) for p in entries]


def _checked(loaded: list[tuple[str, np.ndarray]] | np.ndarray, kind: str, sample_shape: tuple[int, ...],
             data_range: tuple[float, float], num: int, mask_means: str, where: str) -> np.ndarray:
    """[1 or num, *sample_shape] (float32 image or bool mask), every entry checked as a single one."""
    flag = "--init" if kind == "image" else "--mask"
    if isinstance(loaded, list):  # a directory: each file one sample, checked alone, named in its error
        rows = []
        for name, a in loaded:
            if a.ndim > len(sample_shape):
                raise ConfigError(f"{flag} {where}/{name} has shape {list(a.shape)}: a directory holds one "
                                  f"sample {list(sample_shape)} per file (or give the stack as one .npy)")
            rows.append(_one(a, kind, sample_shape, data_range, mask_means, f"{flag} {where}/{name}")[:1])
        return np.concatenate(rows)
    if loaded.ndim <= len(sample_shape):  # one for all: [*sample_shape], or a mask's [H, W] / [1, H, W]
        return _one(loaded, kind, sample_shape, data_range, mask_means, f"{flag} {where}", batch=num)[:1]
    if loaded.ndim != len(sample_shape) + 1:
        raise ConfigError(f"{flag} {where} has shape {list(loaded.shape)}; give one sample "
                          f"{list(sample_shape)} or a stack [N, {', '.join(map(str, sample_shape))}]")
    if loaded.shape[0] != num:
        raise ConfigError(f"{flag} {where} holds {loaded.shape[0]} {kind}s for --num {num}; "
                          f"give one per sample (or one {kind} for all)")
    if kind == "mask" and len(sample_shape) == 3 and loaded.shape[1] == 1:  # [N, 1, H, W]: every channel
        loaded = np.broadcast_to(loaded, (num, *sample_shape))
    try:  # the whole stack at once; on an error, find the first row that fails and name it
        return np.ascontiguousarray(_one(loaded, kind, sample_shape, data_range, mask_means, f"{flag} {where}",
                                         batch=num))
    except ConfigError:
        for i in range(num):
            _one(loaded[i], kind, sample_shape, data_range, mask_means, f"{flag} {where}[{i}]", batch=num)
        raise


def _one(a: np.ndarray, kind: str, sample_shape: tuple[int, ...], data_range: tuple[float, float],
         mask_means: str, where: str, batch: int = 1) -> np.ndarray:
    """`a` (one entry, or a [batch, ...] stack) checked by `make_edit`: [batch, *sample_shape] (a
    broadcast view for one entry; `batch` also names the stack shape in a shape error)."""
    try:
        if kind == "image":
            edit = make_edit(sample_shape, data_range, batch, a)
            out = edit.image
        else:  # a mask is checked beside an in-range stand-in image
            stand_in = np.full(sample_shape, data_range[0], np.float32)
            edit = make_edit(sample_shape, data_range, batch, stand_in, a, mask_means)
            out = edit.mask
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    assert out is not None
    return out
