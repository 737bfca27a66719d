"""Moving a bundle to workers as bytes: packed once on the driver, unpacked once per node.

The driver puts the packed files in Ray's object store once (`ray.put`); each node's
workers unpack them into a content-addressed directory under the node's temp dir, so no
shared filesystem is needed and no worker re-exports the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ddpm_rt.bundle.manifest import MANIFEST_FILE
from ddpm_rt.errors import BundleError

UNPACK_ROOT = "ddpm-rt-bundles"


def pack_bundle(bundle_dir: Path) -> dict[str, bytes]:
    """{file name: bytes} of the bundle directory's regular files (not subdirectories: caches)."""
    files = {p.name: p.read_bytes() for p in sorted(Path(bundle_dir).iterdir()) if p.is_file()}
    if MANIFEST_FILE not in files:
        raise BundleError(f"{bundle_dir} has no {MANIFEST_FILE}; give a bundle from `ddpm-rt export`")
    return files


def files_key(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}|{len(files[name])}|".encode())
        h.update(files[name])
    return h.hexdigest()


def unpack_bundle(files: dict[str, bytes], root: Path | None = None) -> Path:
    """The bundle under root/<content hash>, written once; concurrent unpackers race safely."""
    base = Path(root or tempfile.gettempdir()) / UNPACK_ROOT
    target = base / files_key(files)[:32]
    if target.is_dir():  # complete by construction: it only ever appears by an atomic rename
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=base))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        os.rename(tmp, target)  # fails if another worker got there first: then use theirs
    except OSError:
        if not target.is_dir():
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return target
