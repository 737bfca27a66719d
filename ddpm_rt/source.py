"""ModelSource: one resolved model, whatever form the user named it in.

`resolve_source` accepts a built-in name (or nothing: the shipped default), a
`ddpm-rt train` checkpoint directory, a diffusers pipeline / UNet2DModel folder
(schedule from its scheduler config), or an exported bundle (directory or .onnx).
Backends ask it for what they need: an nn.Module (torch backends) or a bundle
directory with `denoiser.onnx` (ORT / TensorRT), exported and cached on demand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddpm_rt.errors import SourceError
from ddpm_rt.spec import DiffusionSpec

if TYPE_CHECKING:
    import torch


@dataclass
class ModelSource:
    """A denoiser plus its diffusion contract."""

    name: str  # e.g. "builtin:digits", "checkpoint:/abs/dir", "bundle:/abs/dir"
    spec: DiffusionSpec
    load_module: Callable[[], torch.nn.Module] | None = None  # None for ONNX-only bundles
    bundle: Path | None = None  # bundle directory (ddpm_rt.json + denoiser.onnx), if any
    untrained: bool = False  # True when a built-in runs without trained weights
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def bundle_dir(self, cache_dir: Path | None = None) -> Path:
        """The bundle for this model: its own, or one exported once into the cache."""
        if self.bundle is not None:
            return self.bundle
        from ddpm_rt.exporter.cache import ensure_bundle

        self.bundle = ensure_bundle(self, cache_dir)
        return self.bundle


def _seeded_build(model: object) -> torch.nn.Module:
    """An untrained built-in with a fixed init, so every backend and the bundle cache see one model."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return model.build().eval()  # type: ignore[attr-defined]


def _builtin(name: str) -> ModelSource:
    from ddpm_rt.models import registry

    model = registry.get_builtin(name)
    if registry.has_shipped_weights(name):
        return ModelSource(f"builtin:{name}", model.spec, lambda: registry.load_shipped(name))
    return ModelSource(
        f"builtin:{name}",
        model.spec,
        lambda: _seeded_build(model),
        untrained=True,
        notes=[f"built-in model {name!r} has no shipped weights: running it UNTRAINED (samples are noise)"],
    )


def _checkpoint(path: Path) -> ModelSource:
    from ddpm_rt.train.checkpoint import load_checkpoint

    module, spec, config = load_checkpoint(path)  # validates now: errors surface at resolve time
    return ModelSource(f"checkpoint:{path.resolve()}", spec, lambda: module, info={"config": config})


def _diffusers(path: Path, layout: str) -> ModelSource:
    from ddpm_rt.exporter import diffusers_source

    src = diffusers_source.load(path, layout, None, allow_pickle=False)  # validates now
    return ModelSource(f"diffusers:{path.resolve()}", src.spec, lambda: src.module, notes=src.notes,
                       info=src.info)


def _bundle(path: Path) -> ModelSource:
    from ddpm_rt.exporter.bundle import load_bundle

    bundle = load_bundle(path)
    origin = bundle.manifest.get("source", {})
    load_module = None
    kind, ref = origin.get("kind"), origin.get("ref")
    if kind == "builtin":
        load_module = _builtin(ref).load_module
    elif kind == "checkpoint" and ref and Path(ref).is_dir():
        load_module = _checkpoint(Path(ref)).load_module
    elif kind == "diffusers" and ref and Path(ref).is_dir():
        from ddpm_rt.exporter import diffusers_source

        layout = diffusers_source.detect(Path(ref))
        if layout is not None:
            def load_module() -> torch.nn.Module:
                return diffusers_source.load(Path(ref), layout, None, allow_pickle=False).module
    return ModelSource(
        f"bundle:{bundle.directory.resolve()}", bundle.spec, load_module, bundle=bundle.directory,
        info={"manifest": bundle.manifest},
    )


def resolve_source(source: str | None) -> ModelSource:
    """Resolve a user-given source string (None = the shipped default model)."""
    from ddpm_rt.models.registry import BUILTIN, DEFAULT_MODEL

    if source is None:
        return _builtin(DEFAULT_MODEL)
    if source in BUILTIN:
        return _builtin(source)
    path = Path(source)
    if not path.exists():
        raise SourceError(
            f"model source {source!r} not found: give a built-in name ({', '.join(BUILTIN)}), "
            "a checkpoint directory from `ddpm-rt train`, or a bundle from `ddpm-rt export`"
        )
    if path.is_dir() and (path / "ddpm_rt.json").exists() or path.suffix == ".onnx":
        return _bundle(path)
    if path.is_dir() and (path / "config.json").exists() and (path / "model.safetensors").exists():
        return _checkpoint(path)
    from ddpm_rt.exporter.diffusers_source import detect

    layout = detect(path)
    if layout is not None:
        return _diffusers(path, layout)
    raise SourceError(
        f"{source} is neither a bundle (ddpm_rt.json + denoiser.onnx) nor a `ddpm-rt train` "
        "checkpoint (config.json + model.safetensors) nor a diffusers folder; for your own module "
        "run `ddpm-rt export --model package.module:factory` first"
    )
