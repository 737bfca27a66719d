"""Export-on-demand cache: a built-in or checkpoint model exported once, reused while its key matches.

Key = sha256 over the weights (every state-dict tensor's name, dtype, shape and bytes),
the DiffusionSpec, the bundle format / exporter / opset versions and the torch version.
A cached bundle is reused only when its manifest carries the same key and it passes
`load_bundle` (hash and contract checks); otherwise it is exported again, atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ddpm_rt.errors import BundleError, SourceError
from ddpm_rt.exporter.contract import CONTRACT
from ddpm_rt.exporter.manifest import EXPORTER_VERSION, FORMAT_VERSION

if TYPE_CHECKING:
    import torch

    from ddpm_rt.source import ModelSource

CACHE_ENV = "DDPM_RT_CACHE"


def default_cache_dir() -> Path:
    """$DDPM_RT_CACHE/bundles, else ~/.cache/ddpm-rt/bundles."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root) if root else Path.home() / ".cache" / "ddpm-rt"
    return base / "bundles"


def content_key(module: torch.nn.Module, spec_dict: dict) -> str:
    """Hex sha256 of the weights, the spec and everything that shapes the exported graph."""
    import torch

    h = hashlib.sha256()
    header = {"spec": spec_dict, "format": FORMAT_VERSION, "exporter": EXPORTER_VERSION,
              "opset": CONTRACT.opset, "torch": torch.__version__.split("+")[0]}
    h.update(json.dumps(header, sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def ensure_bundle(source: ModelSource, cache_dir: Path | None = None) -> Path:
    """The cached bundle directory for `source`, exported now if absent or stale."""
    from ddpm_rt.exporter.bundle import load_bundle
    from ddpm_rt.exporter.export import ExportOptions, export_bundle, stderr_status
    from ddpm_rt.exporter.sources import from_model_source

    if source.load_module is None:
        raise SourceError(f"{source.name} has no PyTorch module to export")
    src = from_model_source(source)
    key = content_key(src.module, src.spec.to_dict())
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / key[:24]
    if (target / "ddpm_rt.json").is_file():
        try:
            bundle = load_bundle(target)
            if bundle.manifest.get("cache_key") == key:
                return target
        except BundleError:
            pass  # stale or damaged: export again over it
    # single-call verification only: the trajectory comparison is for explicit exports
    export_bundle(src, target, ExportOptions(trajectory_steps=0), status=stderr_status,
                  extra_manifest={"cache_key": key})
    return target
