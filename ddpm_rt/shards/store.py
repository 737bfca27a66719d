"""A shard directory on disk: atomic shard writes, checksum checks, manifest updates, reading.

Only one process (the driver) writes here: each shard goes to a temporary file in the
same directory and is renamed into place; the manifest is rewritten atomically after it.
A shard counts as present only if the manifest records it and the file's sha256 matches.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_rt.errors import ConfigError, SourceError
from ddpm_rt.fsutil import atomic_write, atomic_write_text, sha256_of
from ddpm_rt.shards.layout import ShardRange, shard_filename
from ddpm_rt.shards.manifest import MANIFEST_FILE, ShardManifest, ShardRecord


class ShardStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"--out {self.directory} is a file; give a directory for the shards")

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_FILE

    def load_manifest(self) -> ShardManifest | None:
        if not self.manifest_path.is_file():
            return None
        return ShardManifest.from_json(self.manifest_path.read_text(), self.manifest_path)

    def open_manifest(self, identity: dict[str, Any], num: int) -> ShardManifest:
        """The directory's manifest checked against this run (a new one if there is none)."""
        manifest = self.load_manifest()
        if manifest is None:
            if self.directory.is_dir() and any(self.directory.glob("shard-*.npy")):
                raise ConfigError(
                    f"{self.directory} holds shard files but no {MANIFEST_FILE}; choose a new --out"
                )
            manifest = ShardManifest(identity, num)
        manifest.check_compatible(identity, num, self.directory)
        manifest.num = num
        self.save_manifest(manifest)
        return manifest

    def save_manifest(self, manifest: ShardManifest) -> None:
        atomic_write_text(self.manifest_path, manifest.to_json())

    def is_valid(self, manifest: ShardManifest, shard: ShardRange) -> bool:
        """Recorded for exactly this range, and the file on disk has the recorded checksum."""
        rec = manifest.shards.get(shard.index)
        if rec is None or (rec.start, rec.stop) != (shard.start, shard.stop):
            return False
        path = self.directory / rec.file
        return path.is_file() and sha256_of(path) == rec.sha256

    def write_shard(self, manifest: ShardManifest, shard: ShardRange, samples: np.ndarray,
                    meta: dict[str, Any]) -> ShardRecord:
        """Write one shard atomically, then record it in the manifest (also atomically)."""
        if samples.shape[0] != shard.size:
            raise ValueError(f"shard {shard.index} has {samples.shape[0]} samples, expected {shard.size}")
        name = shard_filename(shard.index)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(samples, dtype=np.float32), allow_pickle=False)

        path = atomic_write(self.directory / name, save)
        record = ShardRecord(index=shard.index, start=shard.start, stop=shard.stop, file=name,
                             sha256=sha256_of(path), backend=str(meta["backend"]),
                             precision=str(meta["precision"]), threads=int(meta["threads"]),
                             worker=str(meta.get("worker", "")), seconds=float(meta.get("seconds", 0.0)),
                             cpu_seconds=float(meta.get("cpu_seconds", 0.0)))
        manifest.shards[shard.index] = record
        self.save_manifest(manifest)
        return record


def open_complete(directory: Path) -> tuple[ShardManifest, list[ShardRecord]]:
    """The manifest of a finished shard directory and its records in sample order (checksums checked)."""
    from ddpm_rt.shards.layout import ShardLayout

    store = ShardStore(directory)
    manifest = store.load_manifest()
    if manifest is None:
        raise SourceError(f"{directory} has no {MANIFEST_FILE}; give a directory written by `ddpm-rt sample --out`")
    layout = ShardLayout(manifest.num, manifest.identity["shard_size"], manifest.identity["micro_batch"])
    missing = [s.index for s in layout.shards() if not store.is_valid(manifest, s)]
    if missing:
        raise SourceError(
            f"{directory} is incomplete: {len(missing)} of {layout.count} shards missing or corrupt "
            f"(first: {shard_filename(missing[0])}); rerun the same `ddpm-rt sample` command to finish it"
        )
    return manifest, [manifest.shards[k] for k in range(layout.count)]


def iter_shards(directory: Path) -> Iterator[np.ndarray]:
    """The samples of a complete shard directory, one shard at a time (memory: one shard)."""
    _, records = open_complete(directory)
    for rec in records:
        yield np.load(Path(directory) / rec.file, allow_pickle=False)
