"""ONNX Runtime's optimized graph, cached beside the bundle under a content key.

ORT can write the graph it ends up running (``SessionOptions.optimized_model_filepath``).
We save it at ``ORT_ENABLE_EXTENDED``: the fusions (GroupNorm, Gelu, attention, Conv+act,
...) are done once, and the file stays portable; the hardware-specific layout transforms
of ``ORT_ENABLE_ALL`` (NCHWc) are applied again, cheaply, each time the cached file is
loaded, because ORT documents that graphs saved at that level may not run elsewhere.

The key is the sha256 of (ONNX sha256, ORT version, provider, saved level, machine
architecture, graph-affecting options). A cache entry is ``<key>.onnx`` plus
``<key>.json`` holding those fields and the sha256 of the saved graph; an entry is used
only when both match, so a stale or half-written file is never loaded. Writes are atomic.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddpm_rt.fsutil import (
    atomic_write,
    atomic_write_text,
    cache_root,
    clean_stale_temps,
    file_lock,
    file_sha256,
    json_key,
    writable_dir,
)

CACHE_FORMAT = 1
CACHE_SUBDIR = "ort_cache"  # inside the bundle directory
SAVED_LEVEL = "extended"  # the portable level the cached file is written at
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # bundles shipped inside ddpm_rt are never written to


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def cache_dir_for(onnx_path: Path, override: str | Path | None = None, subdir: str = CACHE_SUBDIR) -> Path:
    """Where the cache lives: `override`, else beside the bundle, else the user cache.

    Bundles shipped inside the package always use the user cache: package data is read-only
    when installed, and an editable checkout must not grow untracked files.
    """
    if override is not None:
        return Path(override) / subdir
    if PACKAGE_DIR not in onnx_path.resolve().parents:
        beside = onnx_path.parent / subdir
        if writable_dir(beside):
            return beside
    return cache_root() / subdir


@dataclass(frozen=True)
class CacheEntry:
    """One cache slot: the key fields and where its files live."""

    directory: Path
    fields: dict[str, Any]

    @property
    def key(self) -> str:
        return json_key(self.fields)

    @property
    def model_path(self) -> Path:
        return self.directory / f"{self.key}.onnx"

    @property
    def meta_path(self) -> Path:
        return self.directory / f"{self.key}.json"

    def valid(self) -> bool:
        """True only when both files exist, the fields match and the saved graph's hash matches."""
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return False
        if meta.get("fields") != self.fields or not self.model_path.is_file():
            return False
        if meta.get("model_stat") == _stat(self.model_path):
            return True  # the file we wrote and hashed, untouched since (writes are atomic renames)
        return meta.get("model_sha256") == file_sha256(self.model_path)


def cache_entry(
    onnx_path: Path, provider: str, options: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> CacheEntry:
    """The cache slot for this ONNX under this ORT version, provider and graph options."""
    import onnxruntime as ort

    fields = {
        "format": CACHE_FORMAT,
        "onnx_sha256": file_sha256(onnx_path),
        "onnxruntime": ort.__version__,
        "provider": provider,
        "level": SAVED_LEVEL,
        "machine": platform.machine(),
        "options": dict(sorted((options or {}).items())),
    }
    return CacheEntry(cache_dir_for(onnx_path, cache_dir), fields)


def build_entry(entry: CacheEntry, onnx_path: Path, providers: list[Any],
                configure: Any = None) -> None:
    """Let ORT optimize `onnx_path` and save the graph into `entry` (atomically, model then meta).

    `configure(session_options)` may add graph-affecting settings (the same ones named in
    the entry's options); the session built here is thrown away.
    """
    import onnxruntime as ort

    def write(tmp: Path) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(tmp)
        so.log_severity_level = 3
        if configure is not None:
            configure(so)
        ort.InferenceSession(str(onnx_path), so, providers=providers)

    atomic_write(entry.model_path, write)
    meta = {"fields": entry.fields, "model_sha256": file_sha256(entry.model_path),
            "model_stat": _stat(entry.model_path), "source": str(onnx_path)}
    atomic_write_text(entry.meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def optimized_model(
    onnx_path: Path, provider: str, providers: list[Any], options: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None, configure: Any = None,
) -> tuple[Path, str]:
    """(graph to load, "hit" | "built" | "uncached"): the cached optimized graph, built if needed.

    Falls back to the original ONNX ("uncached") when no cache directory can be written.
    """
    entry = cache_entry(onnx_path, provider, options, cache_dir)
    if entry.valid():
        return entry.model_path, "hit"
    if not writable_dir(entry.directory):
        return onnx_path, "uncached"
    with file_lock(entry.directory / f".{entry.key}.lock"):  # one writer per entry
        clean_stale_temps(entry.directory)
        if not entry.valid():  # another process may have built it while we waited
            build_entry(entry, onnx_path, providers, configure)
            return entry.model_path, "built"
    return entry.model_path, "hit"
