"""Your own module as a source: `package.module:factory` plus a weights file (export only).

A conditional module (``forward(x, t, *cond)``) declares its conditioning inputs on the command
line, `--conditioning JSON`: a list of `CondInput` dicts in the order forward takes them, e.g.
``[{"name": "class_labels", "kind": "class", "num_classes": 10, "null": 10}]``
(`ddpm_rt.conditioning`), the same way its schedule comes from the schedule flags.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ddpm_rt.conditioning import CondInput
from ddpm_rt.errors import ConfigError, SourceError
from ddpm_rt.fsutil import file_sha256
from ddpm_rt.sources.flags import ScheduleFlags
from ddpm_rt.sources.source import ModelSource, SourceKind, content_key
from ddpm_rt.weights import load_state_checked, read_state_dict


def import_factory(ref: str) -> Any:
    """`package.module:factory` → the callable (a function or an nn.Module class).

    The working directory is searched first, as most Python tools that import user code do,
    so `--model mypkg.net:make` finds ./mypkg without an install.
    """
    mod_name, _, attr = ref.partition(":")
    if not mod_name or not attr:
        raise ConfigError(f"--model must look like package.module:factory, got {ref!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise SourceError(f"cannot import module {mod_name!r} for --model (searched the working directory "
                          f"and sys.path): {e}") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SourceError(f"module {mod_name!r} has no attribute {attr!r} (from --model {ref})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SourceError(f"--model {ref}: {attr!r} is not callable")
    return obj


def module_source(ref: str, weights: Path | None, flags: ScheduleFlags, allow_pickle: bool,
                  conditioning: tuple[CondInput, ...] = ()) -> ModelSource:
    """Import and build the module now (user code fails early, with its own message)."""
    import torch

    factory = import_factory(ref)
    spec = replace(flags.diffusion_spec(), conditioning=tuple(conditioning))
    try:
        module = factory()
    except Exception as e:  # noqa: BLE001 - user code
        raise SourceError(f"--model {ref}: calling the factory failed: {type(e).__name__}: {e}") from None
    if not isinstance(module, torch.nn.Module):
        raise SourceError(f"--model {ref} returned {type(module).__name__}, not a torch.nn.Module")
    notes: list[str] = []
    if weights is None:
        notes.append(f"no --weights given: exporting {ref} with its initial (untrained) weights")
    else:
        load_state_checked(module, read_state_dict(weights, allow_pickle), weights)
    module = module.float().eval()
    key = content_key({"kind": "module", "ref": ref, "spec": spec.to_dict(),
                       "weights": None if weights is None else file_sha256(Path(weights))})
    info = {"weights": None if weights is None else str(Path(weights).resolve())}
    return ModelSource(SourceKind.MODULE, ref, spec, key, load_module=lambda: module,
                       notes=tuple(notes), info=info)
