"""Built-in models: the catalog's spec, the shipped weights (for torch) and the shipped bundle (for the runtime)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ddpm_rt.fsutil import file_sha256
from ddpm_rt.models import catalog
from ddpm_rt.sources.source import ModelSource, SourceKind, content_key

if TYPE_CHECKING:
    import torch

UNTRAINED_SEED = 0


def load_shipped(name: str) -> torch.nn.Module:
    """The built-in `name` with its shipped trained weights, in eval mode."""
    from ddpm_rt.errors import SourceError
    from ddpm_rt.weights import load_weights

    model = catalog.get_builtin(name)
    if not catalog.has_shipped_weights(name):
        shipped = [n for n in catalog.BUILTIN if catalog.has_shipped_weights(n)]
        raise SourceError(
            f"no shipped weights for {name!r}; models with weights: {', '.join(shipped) or 'none'} "
            f"(or train one with `ddpm-rt train {name}`)"
        )
    d = catalog.shipped_dir(name)
    cfg = json.loads((d / catalog.CONFIG_FILE).read_text())
    module = model.build(cfg.get("model_config"))
    load_weights(module, d / catalog.WEIGHTS_FILE)
    return module.eval()


def _seeded_build(name: str) -> torch.nn.Module:
    """An untrained built-in with a fixed init, so every backend and the bundle cache see one model."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        return catalog.get_builtin(name).build().eval()


def builtin_source(name: str) -> ModelSource:
    model = catalog.get_builtin(name)
    spec = model.spec
    if catalog.has_shipped_weights(name):
        d = catalog.shipped_dir(name)
        key = content_key({"kind": "builtin", "name": name, "spec": spec.to_dict(),
                           "weights": file_sha256(d / catalog.WEIGHTS_FILE),
                           "config": file_sha256(d / catalog.CONFIG_FILE)})
        return ModelSource(SourceKind.BUILTIN, name, spec, key, bundle=catalog.shipped_bundle(name),
                           load_module=lambda: load_shipped(name))
    key = content_key({"kind": "builtin", "name": name, "spec": spec.to_dict(), "config": model.config,
                       "factory": model.factory, "untrained_seed": UNTRAINED_SEED})
    return ModelSource(
        SourceKind.BUILTIN, name, spec, key, load_module=lambda: _seeded_build(name), untrained=True,
        notes=(f"built-in model {name!r} has no shipped weights: running it UNTRAINED (samples are noise)",),
    )
