"""One entry point from what the user typed to a ModelSource.

`resolve_source` accepts a built-in name (or nothing: the shipped default), a bundle
(directory or .onnx), a `ddpm-rt train` checkpoint directory, or a diffusers pipeline /
UNet2DModel folder; `resolve_export_source` adds `--model package.module:factory` and the
schedule flags of sources that carry no schedule. Resolving reads files and JSON only:
no torch, no export (see `ddpm_rt.prepare` for turning a source into an artifact).
"""

from __future__ import annotations

from pathlib import Path

from ddpm_rt.bundle.load import load_bundle
from ddpm_rt.bundle.manifest import MANIFEST_FILE
from ddpm_rt.conditioning import CondInput
from ddpm_rt.errors import ConfigError, SourceError
from ddpm_rt.models.catalog import BUILTIN, DEFAULT_MODEL
from ddpm_rt.sources.builtin import builtin_source
from ddpm_rt.sources.diffusers import detect, diffusers_source
from ddpm_rt.sources.flags import ScheduleFlags
from ddpm_rt.sources.source import ModelSource, SourceKind
from ddpm_rt.weights import PICKLE_SUFFIXES, SAFE_SUFFIXES

FOLDER_KINDS = ("a `ddpm-rt train` checkpoint (config.json + model.safetensors), a diffusers pipeline "
                "(unet/ + scheduler/scheduler_config.json) or UNet2DModel folder (config.json + "
                "diffusion_pytorch_model.safetensors)")


def bundle_source(path: Path) -> ModelSource:
    """An exported bundle. Its torch module is reachable only through its original source."""
    from ddpm_rt.sources.checkpoint import checkpoint_source, is_checkpoint

    bundle = load_bundle(path)
    origin = bundle.manifest.get("source") or {}
    load_module = None
    kind, ref = origin.get("kind"), origin.get("ref")
    try:
        if kind == SourceKind.BUILTIN.value and ref in BUILTIN:
            load_module = builtin_source(ref).load_module
        elif kind == SourceKind.CHECKPOINT.value and ref and is_checkpoint(Path(ref)):
            load_module = checkpoint_source(Path(ref)).load_module
        elif kind == SourceKind.DIFFUSERS.value and ref and (layout := detect(Path(ref))) is not None:
            load_module = diffusers_source(Path(ref), layout).load_module
    except SourceError:
        load_module = None  # the original moved or changed: the bundle still samples on ONNX backends
    where = bundle.onnx_path if not bundle.hash_checked else bundle.directory
    return ModelSource(SourceKind.BUNDLE, str(Path(where).resolve()), bundle.spec, bundle.onnx_sha256,
                       bundle=Path(where), load_module=load_module, info={"manifest": bundle.manifest})


def _is_bundle(path: Path) -> bool:
    return (path.is_dir() and (path / MANIFEST_FILE).is_file()) or (path.is_file() and path.suffix == ".onnx")


def resolve_source(source: str | None) -> ModelSource:
    """Resolve a user-given source string (None = the shipped default model)."""
    if source is None:
        return builtin_source(DEFAULT_MODEL)
    if source in BUILTIN:
        return builtin_source(source)
    path = Path(source)
    if not path.exists():
        raise SourceError(
            f"model source {source!r} not found: give a built-in name ({', '.join(BUILTIN)}), "
            "a bundle from `ddpm-rt export`, a checkpoint directory from `ddpm-rt train` or a diffusers folder"
        )
    if _is_bundle(path):
        return bundle_source(path)
    from ddpm_rt.sources.checkpoint import checkpoint_source, is_checkpoint

    if is_checkpoint(path):
        return checkpoint_source(path)
    layout = detect(path)
    if layout is not None:
        return diffusers_source(path, layout)
    if path.is_file() and path.suffix.lower() in (*PICKLE_SUFFIXES, *SAFE_SUFFIXES):
        raise SourceError(
            f"{source} is a bare weights file; export it with its module first: "
            f"`ddpm-rt export --model package.module:factory --weights {source}`"
        )
    raise SourceError(f"{source} is not a model ddpm-rt can read: expected a bundle (ddpm_rt.json + "
                      f"denoiser.onnx), {FOLDER_KINDS}; for your own module use `ddpm-rt export --model`")


def resolve_export_source(
    source: str | None,
    *,
    model: str | None = None,
    weights: Path | None = None,
    flags: ScheduleFlags | None = None,
    allow_pickle: bool = False,
    conditioning: tuple[CondInput, ...] | None = None,
    null_label: float | None = None,
) -> ModelSource:
    """Resolve the SOURCE argument / --model option of `ddpm-rt export`.

    `flags` are the schedule flags the user actually gave (None = none): they apply to a
    module or a bare UNet folder; for a source that carries its own schedule they are refused.
    `conditioning` (--conditioning) declares a --model module's conditioning inputs; `null_label`
    (--null-label) is a class-conditional diffusers UNet's unconditional label.
    """
    if model is not None:
        if source is not None:
            raise ConfigError("give either SOURCE or --model package.module:factory, not both")
        if null_label is not None:
            raise ConfigError("--null-label goes with a diffusers UNet folder; for --model, give the null in "
                              "--conditioning")
        from ddpm_rt.sources.module import module_source

        return module_source(model, weights, flags or ScheduleFlags(), allow_pickle, conditioning or ())
    if conditioning is not None:
        raise ConfigError("--conditioning goes with --model package.module:factory; other sources carry their own "
                          "(a diffusers UNet's comes from its config, with --null-label)")
    if source is None:
        raise ConfigError(
            "nothing to export: give a built-in name, a checkpoint or diffusers folder, "
            "or --model package.module:factory --weights FILE"
        )
    if weights is not None:
        raise ConfigError("--weights goes with --model package.module:factory")
    path = Path(source)
    if source not in BUILTIN and path.exists() and (layout := detect(path)) is not None:
        src = diffusers_source(path, layout, flags, allow_pickle, null_label)
        if flags is not None and layout == "pipeline" and (path / "scheduler" / "scheduler_config.json").is_file():
            raise ConfigError(f"{source} is a diffusers pipeline: its scheduler config sets the schedule; "
                              "drop --schedule/--num-train-timesteps/--beta-*/--prediction-type/--clip")
        return src
    if null_label is not None:
        raise ConfigError(f"--null-label goes with a diffusers UNet folder; {source} carries its own conditioning")
    if flags is not None:
        what = "built-in model" if source in BUILTIN else "checkpoint or bundle"
        raise ConfigError(f"{source} is a {what} that carries its own schedule; drop --schedule/"
                          "--num-train-timesteps/--beta-*/--alpha/--prediction-type/--sample-shape/--clip "
                          "(they apply to --model and bare UNet folders only)")
    src = resolve_source(source)
    if src.kind is SourceKind.BUNDLE:
        raise SourceError(f"{source} is already an exported bundle; export from its original source instead")
    return src
