"""What `ddpm-rt export` can read: built-in names, `ddpm-rt train` checkpoints, diffusers
folders and any module given as `package.module:factory` plus a weights file.

Each resolves to an `ExportSource`: an eval-mode fp32 CPU module, its DiffusionSpec and
the manifest's `source` entry. Pickle weights are refused unless explicitly allowed, and
then read with `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddpm_rt.errors import ConfigError, SourceError
from ddpm_rt.schedule import KINDS, ScheduleSpec
from ddpm_rt.spec import DiffusionSpec
from ddpm_rt.weights import load_state_checked

if TYPE_CHECKING:
    import torch

    from ddpm_rt.source import ModelSource

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl")
SAFE_SUFFIXES = (".safetensors",)


@dataclass
class ExportSource:
    """A module ready to export, its diffusion contract and where it came from."""

    module: torch.nn.Module
    spec: DiffusionSpec
    kind: str  # builtin | checkpoint | diffusers | module
    ref: str  # built-in name, absolute path, or "pkg.mod:factory"
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def source_entry(self) -> dict[str, str]:
        return {"kind": self.kind, "ref": self.ref}


@dataclass(frozen=True)
class ScheduleFlags:
    """Schedule / contract flags for sources that do not carry their own (module, bare UNet)."""

    schedule: str = "linear"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    alpha: float = 0.99
    prediction_type: str = "epsilon"
    sample_shape: str | None = None  # "C,H,W" or "D"
    clip: str | None = None  # "LO,HI", "R" (= -R,R) or "none"

    def diffusion_spec(self, sample_shape: tuple[int, ...] | None = None) -> DiffusionSpec:
        shape = parse_shape(self.sample_shape) if self.sample_shape else sample_shape
        if shape is None:
            raise ConfigError("this source needs --sample-shape C,H,W (or D for vectors)")
        if self.schedule not in KINDS:
            raise ConfigError(f"unknown --schedule {self.schedule!r}; choose one of {', '.join(KINDS)}")
        if self.schedule == "betas":
            raise ConfigError("--schedule betas needs explicit betas: export a diffusers folder with trained_betas instead")
        schedule = ScheduleSpec(
            kind=self.schedule, num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start, beta_end=self.beta_end, alpha=self.alpha,
        )
        return DiffusionSpec(schedule, self.prediction_type, shape, clip=parse_clip(self.clip))


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        shape = ()
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ConfigError(f"--sample-shape must be C,H,W or D with positive integers, got {text!r}")
    return shape


def parse_clip(text: str | None) -> tuple[float, float] | None:
    if text is None or text.strip().lower() in ("", "none", "off"):
        return None
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] > 0:
        return (-parts[0], parts[0])
    if len(parts) == 2 and parts[0] < parts[1]:
        return (parts[0], parts[1])
    raise ConfigError(f"--clip must be LO,HI with LO < HI, a positive R (= -R,R) or none; got {text!r}")


def read_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or (only with allow_pickle) a torch pickle via weights_only."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SourceError(f"weights file {path} not found")
    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise SourceError(f"cannot read {path} as safetensors: {e}") from None
    if suffix not in PICKLE_SUFFIXES:
        raise SourceError(f"unknown weights format {path.name!r}; use .safetensors")
    if not allow_pickle:
        raise SourceError(
            f"{path.name} is a pickle checkpoint, which can run code when loaded; convert it to "
            ".safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True)"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise SourceError(f"cannot load {path} with torch.load(weights_only=True): {str(e).splitlines()[0]}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning-style checkpoint
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise SourceError(f"{path} does not hold a state dict of tensors")
    return obj


def import_factory(ref: str):
    """`package.module:factory` → the callable (a function or an nn.Module class)."""
    mod_name, _, attr = ref.partition(":")
    if not mod_name or not attr:
        raise ConfigError(f"--model must look like package.module:factory, got {ref!r}")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise SourceError(f"cannot import module {mod_name!r} for --model: {e}") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SourceError(f"module {mod_name!r} has no attribute {attr!r} (from --model {ref})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SourceError(f"--model {ref}: {attr!r} is not callable")
    return obj


def module_source(ref: str, weights: Path | None, flags: ScheduleFlags, allow_pickle: bool) -> ExportSource:
    import torch

    factory = import_factory(ref)
    try:
        module = factory()
    except Exception as e:  # noqa: BLE001 - user code
        raise SourceError(f"--model {ref}: calling the factory failed: {type(e).__name__}: {e}") from None
    if not isinstance(module, torch.nn.Module):
        raise SourceError(f"--model {ref} returned {type(module).__name__}, not a torch.nn.Module")
    notes = []
    if weights is None:
        notes.append(f"no --weights given: exporting {ref} with its initial (untrained) weights")
    else:
        load_state_checked(module, read_state_dict(weights, allow_pickle), weights)
    spec = flags.diffusion_spec()
    info = {"weights": None if weights is None else str(Path(weights).resolve())}
    return ExportSource(module.float().eval(), spec, "module", ref, notes, info)


def _from_model_source(src: ModelSource) -> ExportSource:
    kind, _, ref = src.name.partition(":")
    if kind == "bundle":
        raise SourceError(
            f"{ref} is already an exported bundle; export from its original source instead"
        )
    assert src.load_module is not None
    module = src.load_module().float().eval()
    return ExportSource(module, src.spec, kind, ref, list(src.notes), dict(src.info))


def from_model_source(src: ModelSource) -> ExportSource:
    """A resolved built-in or checkpoint ModelSource (used by the bundle cache)."""
    return _from_model_source(src)


def resolve_export_source(
    source: str | None,
    *,
    model: str | None = None,
    weights: Path | None = None,
    flags: ScheduleFlags | None = None,
    flags_given: bool = False,
    allow_pickle: bool = False,
) -> ExportSource:
    """Resolve the SOURCE argument / --model option of `ddpm-rt export`."""
    flags = flags or ScheduleFlags()
    if model is not None:
        if source is not None:
            raise ConfigError("give either SOURCE or --model package.module:factory, not both")
        return module_source(model, weights, flags, allow_pickle)
    if source is None:
        raise ConfigError(
            "nothing to export: give a built-in name, a checkpoint or diffusers folder, "
            "or --model package.module:factory --weights FILE"
        )
    if weights is not None:
        raise ConfigError("--weights goes with --model package.module:factory")
    from ddpm_rt.models.registry import BUILTIN

    path = Path(source)
    if source not in BUILTIN and not path.exists():
        raise SourceError(
            f"model source {source!r} not found: give a built-in name ({', '.join(BUILTIN)}), a "
            "`ddpm-rt train` checkpoint folder, a diffusers folder, or --model package.module:factory"
        )
    if source not in BUILTIN:
        from ddpm_rt.exporter import diffusers_source

        layout = diffusers_source.detect(path)
        if layout is not None:
            return diffusers_source.load(path, layout, flags if flags_given else None, allow_pickle)
        if path.is_file() and path.suffix.lower() in (*PICKLE_SUFFIXES, *SAFE_SUFFIXES):
            raise SourceError(
                f"{source} is a bare weights file; give the module too: "
                f"--model package.module:factory --weights {source}"
            )
    from ddpm_rt.source import resolve_source

    try:
        return _from_model_source(resolve_source(source))
    except SourceError as e:
        if "neither a bundle" in str(e):
            raise SourceError(
                f"{source} is not a model folder ddpm-rt can export: expected a `ddpm-rt train` "
                "checkpoint (config.json + model.safetensors), a diffusers pipeline (unet/ + "
                "scheduler/scheduler_config.json) or UNet2DModel folder (config.json + "
                "diffusion_pytorch_model.safetensors)"
            ) from None
        raise
