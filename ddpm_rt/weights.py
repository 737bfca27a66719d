"""Weights from disk: safetensors (or, only when allowed, a pickle via weights_only) into a module.

Never loads an untrusted pickle: `.pt`/`.pth`/`.ckpt`/`.bin` are refused unless the user
passes `--allow-pickle`, and then read with `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddpm_rt.errors import SourceError, first_line
from ddpm_rt.fsutil import atomic_write, atomic_write_text

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl")
SAFE_SUFFIXES = (".safetensors",)

if TYPE_CHECKING:
    import torch


def load_state_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Load `state` into `module`; SourceError naming missing/unexpected/mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or extra or bad:
        parts = [f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", bad))
                 if keys]
        raise SourceError(f"weights in {where} do not match the module ({'; '.join(parts)})")
    module.load_state_dict(state)


def read_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or (only with allow_pickle) a torch pickle via weights_only."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SourceError(f"weights file {path} not found")
    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise SourceError(f"cannot read {path} as safetensors: {e}") from None
    if suffix not in PICKLE_SUFFIXES:
        raise SourceError(f"unknown weights format {path.name!r}; use .safetensors")
    if not allow_pickle:
        raise SourceError(
            f"{path.name} is a pickle checkpoint, which can run code when loaded; convert it to "
            ".safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True)"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise SourceError(f"cannot load {path} with torch.load(weights_only=True): {first_line(e)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning-style checkpoint
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise SourceError(f"{path} does not hold a state dict of tensors")
    return obj


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, str(tmp)), what="weights directory")


def save_json(obj: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n", what="weights directory")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(path)


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Load a safetensors state dict into `module`; SourceError if names or shapes differ."""
    load_state_checked(module, read_tensors(path), path)
