"""The on-disk cache of what was measured about a bundle on this machine: quality-guard verdicts,
backend rankings, guidance modes. One JSON file per key; an entry is used only when the fields it
records equal the ones asked for (any change of bundle, CPU, versions or settings measures again),
and writes are atomic."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_rt.errors import ConfigError
from ddpm_rt.fsutil import atomic_write_text, json_key
from ddpm_rt.runtime import ort_cache

if TYPE_CHECKING:
    from ddpm_rt.bundle.load import Bundle

CACHE_SUBDIR = "selection"


def cache_dir_for(bundle: Bundle, override: str | Path | None = None) -> Path:
    if override is not None:
        return Path(override) / CACHE_SUBDIR
    return ort_cache.cache_dir_for(Path(bundle.onnx_path), override, subdir=CACHE_SUBDIR)


def runtime_versions() -> dict[str, str | None]:
    import importlib.metadata

    import onnxruntime

    import ddpm_rt

    try:  # the installed distribution's version: importing openvino costs ~0.1-0.2 s
        ov_version: str | None = importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        ov_version = None
    return {"ddpm_rt": getattr(ddpm_rt, "__version__", "unknown"), "onnxruntime": onnxruntime.__version__,
            "openvino": ov_version, "numpy": np.__version__}


def key(fields: dict[str, Any]) -> str:
    return json_key(fields)


def read(path: Path, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The cached entry at `path` when it was made for exactly `fields`, else None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = isinstance(data, dict) and data.get("fields") == json.loads(json.dumps(fields, default=str))
    return data if same else None


def write(path: Path, fields: dict[str, Any], result: dict[str, Any]) -> None:
    with contextlib.suppress(OSError, ConfigError):  # an unwritable cache only costs a re-measure
        atomic_write_text(path, json.dumps({"fields": fields, "result": result}, indent=2, default=str) + "\n")
