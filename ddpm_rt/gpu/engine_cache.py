"""The TensorRT engine cache: keys, a per-key lock, atomic writes and stale detection.

An engine lives inside its bundle as ``engines/<key>.plan`` with ``engines/<key>.json``
beside it. The key hashes everything that makes a serialized engine valid (ONNX
content hash, TensorRT version, GPU name and compute capability, precision, batch
range, builder optimisation level). A cached engine is used only when its metadata
file matches the wanted metadata field by field, its own fields hash to its file
name, and the plan's sha256 matches the one recorded: a file merely existing is
never enough. The JSON is written after the plan, so it is the commit marker.

Two processes building the same key serialize on ``<key>.lock`` (fcntl.flock):
the second waits, then finds the finished engine and builds nothing.

Pure Python (no torch, no tensorrt): everything here is unit-tested on any machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ddpm_rt.errors import ConfigError
from ddpm_rt.fsutil import atomic_write_bytes, atomic_write_text, file_lock, file_sha256, json_key

CACHE_FORMAT = 1
ENGINES_DIR = "engines"
LogFn = Callable[[str], None]


@dataclass(frozen=True)
class EngineMeta:
    """Everything an engine's validity depends on; its hash is the cache key."""

    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    precision: str  # fp32 | fp16 | bf16
    min_batch: int
    opt_batch: int
    max_batch: int
    opt_level: int  # TensorRT builder optimisation level 0..5

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(
                "batch range must satisfy 1 <= min <= opt <= max, got "
                f"min={self.min_batch} opt={self.opt_batch} max={self.max_batch}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineMeta:
        return cls(**{f.name: d[f.name] for f in fields(cls)})

    def key(self) -> str:
        return engine_key(self)

    def covers(self, batch: int) -> bool:
        return self.min_batch <= batch <= self.max_batch

    def same_except_batch(self, other: EngineMeta) -> bool:
        blank = {"min_batch": 1, "opt_batch": 1, "max_batch": 1}
        return replace(self, **blank) == replace(other, **blank)


def engine_key(meta: EngineMeta) -> str:
    """A stable 20-hex-digit hash of the metadata (plus the cache format)."""
    return json_key({"format": CACHE_FORMAT, **meta.to_dict()}, 20)


def timing_cache_name(trt_version: str, gpu_name: str, compute_capability: str) -> str:
    """File name of the shared timing cache for one TensorRT version on one kind of GPU."""
    return f"timing-{json_key([trt_version, gpu_name, compute_capability], 16)}.cache"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CachedEngine:
    """A validated engine on disk."""

    plan_path: Path
    meta: EngineMeta
    built: bool  # True when this call built it, False when it came from the cache

    @property
    def key(self) -> str:
        return self.meta.key()


class EngineCache:
    """The `engines/` directory of one bundle (or any directory)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @classmethod
    def for_bundle(cls, bundle_dir: Path) -> EngineCache:
        return cls(Path(bundle_dir) / ENGINES_DIR)

    def paths(self, key: str) -> tuple[Path, Path, Path]:
        """(plan, metadata json, lock file) for `key`."""
        d = self.directory
        return d / f"{key}.plan", d / f"{key}.json", d / f"{key}.lock"

    def check(self, meta: EngineMeta) -> tuple[CachedEngine | None, str | None]:
        """(engine, None) when a valid engine for `meta` is cached; (None, reason) otherwise.

        reason is None when nothing is there at all, else why the files are stale or foreign.
        """
        key = meta.key()
        plan, meta_json, _ = self.paths(key)
        if not meta_json.exists() and not plan.exists():
            return None, None
        if not meta_json.exists():
            return None, f"engine {key}: plan without metadata (an interrupted or foreign write)"
        try:
            recorded = json.loads(meta_json.read_text())
            found = EngineMeta.from_dict(recorded["meta"])
        except (OSError, ValueError, KeyError, TypeError, ConfigError) as e:
            return None, f"engine {key}: unreadable metadata ({type(e).__name__}: {e})"
        if recorded.get("format") != CACHE_FORMAT:
            return None, f"engine {key}: cache format {recorded.get('format')!r}, expected {CACHE_FORMAT}"
        if found != meta:
            diff = [
                f"{f.name} {getattr(found, f.name)!r} != {getattr(meta, f.name)!r}"
                for f in fields(EngineMeta)
                if getattr(found, f.name) != getattr(meta, f.name)
            ]
            return None, f"engine {key}: metadata does not match ({'; '.join(diff)})"
        if recorded.get("key") != key or found.key() != key:
            return None, f"engine {key}: recorded key {recorded.get('key')!r} does not match its metadata"
        if not plan.exists():
            return None, f"engine {key}: metadata without plan file"
        if file_sha256(plan) != recorded.get("plan_sha256"):
            return None, f"engine {key}: plan file does not match its recorded sha256 (edited or truncated)"
        return CachedEngine(plan, meta, built=False), None

    def find_covering(self, meta: EngineMeta, batch: int) -> CachedEngine | None:
        """A valid cached engine equal to `meta` except for a batch range that covers `batch`."""
        if not self.directory.is_dir():
            return None
        best: CachedEngine | None = None
        for meta_json in sorted(self.directory.glob("*.json")):
            try:
                found = EngineMeta.from_dict(json.loads(meta_json.read_text())["meta"])
            except (OSError, ValueError, KeyError, TypeError, ConfigError):
                continue
            if not (found.same_except_batch(meta) and found.covers(batch)):
                continue
            engine, _ = self.check(found)
            # prefer the engine tuned closest to this batch
            if engine is not None and (
                best is None or abs(found.opt_batch - batch) < abs(best.meta.opt_batch - batch)
            ):
                best = engine
        return best

    def get_or_build(
        self,
        meta: EngineMeta,
        build: Callable[[], bytes],
        *,
        log: LogFn | None = None,
        force: bool = False,
    ) -> CachedEngine:
        """The engine for `meta`: from the cache when valid, else `build()` once under the lock.

        A concurrent builder of the same key is waited for; its engine is then used.
        Stale or foreign files for the key are reported through `log` and replaced.
        """
        key = meta.key()
        plan, meta_json, lock = self.paths(key)
        self._check_writable()
        with file_lock(lock, log, f"building engine {key}"):
            engine, reason = self.check(meta)
            if engine is not None and not force:
                return engine
            if reason is not None and log is not None:
                log(f"{reason}; rebuilding")
            start = time.perf_counter()
            data = build()
            if not data:
                raise RuntimeError(f"engine build for {key} returned no data")
            # plan first, metadata last: the metadata file commits the entry
            with contextlib.suppress(FileNotFoundError):
                meta_json.unlink()
            atomic_write_bytes(plan, data)
            record = {
                "format": CACHE_FORMAT,
                "key": key,
                "meta": meta.to_dict(),
                "plan_sha256": sha256_bytes(data),
                "plan_bytes": len(data),
                "build_s": round(time.perf_counter() - start, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_text(meta_json, json.dumps(record, indent=2) + "\n")
            return CachedEngine(plan, meta, built=True)

    def _check_writable(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"cannot create engine cache {self.directory}: {e.strerror}; "
                "pass --cache-dir to keep engines elsewhere"
            ) from None
        if not os.access(self.directory, os.W_OK):
            raise ConfigError(
                f"engine cache {self.directory} is not writable; pass --cache-dir to keep engines elsewhere"
            )
