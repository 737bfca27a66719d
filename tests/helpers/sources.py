"""ModelSources over in-memory modules, for export / bundle / backend tests."""

from __future__ import annotations

import hashlib

from ddpm_rt.sources.source import ModelSource, SourceKind
from ddpm_rt.spec import DiffusionSpec


def weights_key(module) -> str:
    """A content key from a module's weights (tests only: real sources hash files)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def module_source(module, spec: DiffusionSpec, ref: str = "tests.helpers.tiny:make_mlp",
                  kind: SourceKind = SourceKind.MODULE) -> ModelSource:
    return ModelSource(kind, ref, spec, weights_key(module), load_module=lambda: module)
