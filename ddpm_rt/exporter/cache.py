"""Export-on-demand cache: a source without a ready bundle is exported once, reused while its key matches.

Key = sha256 of (the source's content key — file hashes, never a rebuilt module — bundle
format, exporter version, opset and torch version). A cached bundle is reused only when
its manifest carries the same key and it passes `load_bundle` (hash check).

One writer per entry: exporters serialise on ``<key>.lock``; the second waits, then finds
the finished bundle. The bundle directory is replaced atomically, so a reader sees the
old or the new directory, never a mixture. A damaged entry (missing or invalid manifest,
a file where the directory belongs, a modified graph) is exported again; temporaries
left by processes that died are removed on the next run.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from ddpm_rt.bundle.contract import CONTRACT
from ddpm_rt.bundle.load import Bundle, load_bundle
from ddpm_rt.bundle.manifest import EXPORTER_VERSION, FORMAT_VERSION
from ddpm_rt.errors import BundleError, SourceError
from ddpm_rt.fsutil import LogFn, cache_root, clean_stale_temps, file_lock
from ddpm_rt.sources.source import ModelSource, content_key

BUNDLES_SUBDIR = "bundles"


def default_cache_dir() -> Path:
    """$DDPM_RT_CACHE/bundles, else ~/.cache/ddpm-rt/bundles."""
    return cache_root() / BUNDLES_SUBDIR


def _torch_version() -> str:
    try:  # the installed version, without importing torch
        return importlib.metadata.version("torch").split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return "none"


def cache_key(source: ModelSource) -> str:
    """Hex sha256 of the source's content and everything that shapes the exported graph."""
    return content_key({"source": source.content_key, "format": FORMAT_VERSION, "exporter": EXPORTER_VERSION,
                        "opset": CONTRACT.opset, "torch": _torch_version()})


def _valid(target: Path, key: str) -> Bundle | None:
    if not target.is_dir():
        return None
    try:
        bundle = load_bundle(target)
    except BundleError:
        return None
    return bundle if bundle.manifest.get("cache_key") == key else None


def cached_bundle(source: ModelSource, cache_dir: Path | None = None, log: LogFn | None = None) -> Bundle:
    """The cached bundle for `source`, exported now (once, under a lock) if absent, stale or damaged."""
    from ddpm_rt.exporter.export import ExportOptions, export_bundle, stderr_status

    if source.load_module is None:
        raise SourceError(f"{source.label} has no PyTorch module to export")
    key = cache_key(source)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / key[:24]
    found = _valid(target, key)  # the common case: no lock needed to read a finished entry
    if found is not None:
        return found
    with file_lock(root / f".{key[:24]}.lock", log=log, what=f"exporting {source.label} into {target}"):
        clean_stale_temps(root)
        found = _valid(target, key)  # another process may have finished it while we waited
        if found is not None:
            return found
        # single-call verification only: the trajectory comparison is for explicit exports
        export_bundle(source, target, ExportOptions(trajectory_steps=0), status=stderr_status,
                      extra_manifest={"cache_key": key}, replace_damaged=True)
    return load_bundle(target)
