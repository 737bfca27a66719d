"""Read a diffusers model folder from local disk: a DDPM/DDIM pipeline (`unet/` +
`scheduler/scheduler_config.json`) or a bare `UNet2DModel` folder plus schedule flags.

diffusers is an optional extra, imported only to load the module. The configs are read as
plain JSON (resolving a folder needs no torch), and the scheduler config mapped onto our
DiffusionSpec:

    beta_schedule linear | scaled_linear | squaredcos_cap_v2 → linear | scaled_linear | cosine
    trained_betas                                           → betas (explicit)
    clip_sample, clip_sample_range                          → clip (-r, r) of x0^
    prediction_type, variance_type, timestep_spacing, steps_offset, set_alpha_to_one
                                                            → prediction type / sampler defaults

A class-conditional UNet2DModel gets one conditioning input, `class_labels` (diffusers' name),
shaped as its `class_embed_type` takes it (`unet_conditioning`):

    None + num_class_embeds  nn.Embedding table  → class   int64 [B], ids 0..num_class_embeds-1
    "timestep"  (positional) time_proj → MLP     → tensor  float32 [B], range 0..T (a level, like t)
    "timestep"  (learned)    nn.Embedding(T)     → class   int64 [B], ids 0..T-1
    "identity"               added as it is      → tensor  float32 [B, time_embed_dim]

diffusers has no notion of a null ("no label") value: `--null-label N` says which value the
model was trained with as "unconditional"; without it the null is None and classifier-free
guidance is refused.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddpm_rt.conditioning import CLASS_LABELS, CondInput
from ddpm_rt.errors import ConfigError, SourceError
from ddpm_rt.fsutil import file_sha256
from ddpm_rt.schedule import ScheduleSpec
from ddpm_rt.sources.flags import ScheduleFlags
from ddpm_rt.sources.source import ModelSource, SourceKind, content_key
from ddpm_rt.spec import DiffusionSpec

if TYPE_CHECKING:
    import torch

UNET_CLASS = "UNet2DModel"
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
VARIANCE_TYPES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small_log",
                  "fixed_large": "fixed_large", "fixed_large_log": "fixed_large"}
SAMPLER_FOR_SCHEDULER = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"cannot read {path} as JSON: {e}") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path} is not a JSON object")
    return data


def detect(path: Path) -> str | None:
    """'pipeline', 'unet' or None (not a diffusers folder)."""
    if not path.is_dir():
        return None
    if (path / "unet" / "config.json").is_file():
        return "pipeline"
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(data, dict) and ("_diffusers_version" in data or "_class_name" in data):
        return "unet"
    return None


def spec_from_scheduler(config: dict[str, Any], sample_shape: tuple[int, ...], where: Path) -> tuple[DiffusionSpec, list[str]]:
    """Map a diffusers scheduler_config.json onto a DiffusionSpec (+ notes on what was ignored)."""
    notes: list[str] = []
    cls = config.get("_class_name", "DDPMScheduler")
    T = int(config.get("num_train_timesteps", 1000))
    trained = config.get("trained_betas")
    if trained is not None:
        schedule = ScheduleSpec(kind="betas", num_train_timesteps=T, betas=tuple(float(b) for b in trained))
    else:
        name = config.get("beta_schedule", "linear")
        if name not in BETA_SCHEDULES:
            raise SourceError(
                f"{where}: beta_schedule {name!r} is not supported; supported: {', '.join(BETA_SCHEDULES)} "
                "or trained_betas"
            )
        schedule = ScheduleSpec(kind=BETA_SCHEDULES[name], num_train_timesteps=T,
                                beta_start=float(config.get("beta_start", 1e-4)),
                                beta_end=float(config.get("beta_end", 0.02)))
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "sample", "v_prediction"):
        raise SourceError(f"{where}: prediction_type {prediction!r} is not supported (epsilon, sample, v_prediction)")
    clip = None
    if config.get("clip_sample", True):
        r = float(config.get("clip_sample_range", 1.0))
        clip = (-r, r)
    if config.get("thresholding", False):
        notes.append(f"{where.name}: dynamic thresholding is not supported; x0^ is clipped to the fixed range instead")
    defaults: dict[str, Any] = {}
    if cls in SAMPLER_FOR_SCHEDULER:
        defaults["sampler"] = SAMPLER_FOR_SCHEDULER[cls]
    else:
        notes.append(f"scheduler {cls} has no ddpm-rt equivalent; the model samples with ddim by default")
    variance = config.get("variance_type", "fixed_small")
    if cls == "DDPMScheduler":
        if variance not in VARIANCE_TYPES:
            raise SourceError(
                f"{where}: variance_type {variance!r} (a learned variance) is not supported; "
                f"supported: {', '.join(VARIANCE_TYPES)}"
            )
        defaults["variance_type"] = VARIANCE_TYPES[variance]
    if "timestep_spacing" in config:
        spacing = config["timestep_spacing"]
        if spacing not in ("leading", "trailing", "linspace"):
            raise SourceError(f"{where}: timestep_spacing {spacing!r} is not supported (leading, trailing, linspace)")
        defaults["spacing"] = spacing
    if config.get("steps_offset"):
        defaults["steps_offset"] = int(config["steps_offset"])
    if cls == "DDIMScheduler" and "set_alpha_to_one" in config:
        defaults["set_alpha_to_one"] = bool(config["set_alpha_to_one"])
    spec = DiffusionSpec(schedule, prediction, sample_shape, clip=clip, sampler_defaults=defaults)
    return spec, notes


def _import_unet_class():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from diffusers import UNet2DModel
    except ImportError:
        raise SourceError(
            "reading a diffusers folder needs the diffusers package: pip install 'ddpm-rt[diffusers]'"
        ) from None
    return UNet2DModel


def read_unet_config(unet_dir: Path, allow_pickle: bool) -> tuple[dict[str, Any], Path]:
    """(config, weights file) of a UNet2DModel folder, checked as plain JSON; SourceError on any mismatch."""
    cfg_path = unet_dir / "config.json"
    if not cfg_path.is_file():
        raise SourceError(f"{unet_dir} has no config.json (not a diffusers model folder)")
    config = _read_json(cfg_path)
    if config.get("_class_name", UNET_CLASS) != UNET_CLASS:
        raise SourceError(f"{cfg_path}: model class {config['_class_name']!r} is not supported; only {UNET_CLASS}")
    if config.get("in_channels", 3) != config.get("out_channels", 3):
        raise SourceError(
            f"{cfg_path}: out_channels {config.get('out_channels', 3)} != in_channels {config.get('in_channels', 3)} "
            "(learned-variance models are not supported)"
        )
    safe = unet_dir / "diffusion_pytorch_model.safetensors"
    pickle = unet_dir / "diffusion_pytorch_model.bin"
    if safe.is_file():
        return config, safe
    if not pickle.is_file():
        raise SourceError(f"{unet_dir} has no diffusion_pytorch_model.safetensors")
    if not allow_pickle:
        raise SourceError(
            f"{pickle} is a pickle checkpoint, which can run code when loaded; save it as safetensors, "
            "or pass --allow-pickle to load it with torch.load(weights_only=True)"
        )
    return config, pickle


CLASS_EMBED_TYPES = (None, "timestep", "identity")  # what UNet2DModel builds a class embedding for


def unet_conditioning(config: dict[str, Any], null_label: float | None, where: Path) -> tuple[CondInput, ...]:
    """The conditioning input of a UNet2DModel config (see the module docstring); () if unconditional."""
    kind, n = config.get("class_embed_type"), config.get("num_class_embeds")
    if kind not in CLASS_EMBED_TYPES:
        raise SourceError(f"{where}: class_embed_type {kind!r} is not one UNet2DModel builds (None with "
                          "num_class_embeds, 'timestep', 'identity'); diffusers would silently ignore the labels")
    if kind is None and not n:
        if null_label is not None:
            raise ConfigError(f"--null-label: {where} is an unconditional UNet (no class embedding)")
        return ()
    if kind is None or (kind == "timestep" and config.get("time_embedding_type", "positional") == "learned"):
        rows = int(n) if kind is None else int(config.get("num_train_timesteps") or 0)
        if rows < 1:
            raise SourceError(f"{where}: a learned timestep embedding needs num_train_timesteps in the config")
        null = None
        if null_label is not None:
            if not float(null_label).is_integer() or not 0 <= null_label < rows:
                raise ConfigError(f"--null-label must be a class id in 0..{rows - 1} (the embedding has {rows} rows), "
                                  f"got {null_label:g}")
            null = int(null_label)
        # a null in the table's last row is the extra "no label" row: the classes are the rows before it
        classes = rows - 1 if null is not None and null == rows - 1 and rows > 1 else rows
        return (CondInput(CLASS_LABELS, "class", num_classes=classes, null=null),)
    if kind == "timestep":
        if config.get("time_embedding_type", "positional") == "fourier":
            raise SourceError(f"{where}: a 'timestep' class embedding with a fourier time embedding takes log() "
                              "of the label; not supported")
        T = float(config.get("num_train_timesteps") or 1000)
        return (CondInput(CLASS_LABELS, "tensor", shape=(), range=(0.0, T), null=null_label),)
    blocks = config.get("block_out_channels") or (224, 448, 672, 896)
    dim = int(config.get("time_embedding_dim") or 4 * int(blocks[0]))
    return (CondInput(CLASS_LABELS, "tensor", shape=(dim,), range=(-1.0, 1.0), null=null_label),)


def load_unet(unet_dir: Path, allow_pickle: bool) -> torch.nn.Module:
    """The UNet2DModel of a local folder in eval mode; SourceError on any mismatch."""
    _, weights = read_unet_config(unet_dir, allow_pickle)
    safe = weights.suffix == ".safetensors"
    UNet2DModel = _import_unet_class()
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            model, info = UNet2DModel.from_pretrained(
                str(unet_dir), use_safetensors=safe, local_files_only=True,
                output_loading_info=True,
            )
    except Exception as e:  # noqa: BLE001 - diffusers raises many types for a bad folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceError(f"cannot load {UNET_CLASS} from {unet_dir}: {first}") from None
    finally:
        dlogging.set_verbosity(level)
    problems = [f"{label}: {', '.join(map(str, keys[:3]))}{' …' if len(keys) > 3 else ''}"
                for label, keys in (("missing", info.get("missing_keys", [])),
                                    ("unexpected", info.get("unexpected_keys", [])),
                                    ("wrong shape", [m[0] if isinstance(m, tuple) else m
                                                     for m in info.get("mismatched_keys", [])]))
                if keys]
    if problems:
        raise SourceError(f"weights in {unet_dir} do not match its config ({'; '.join(problems)})")
    return model.float().eval()


def _wrap(unet: torch.nn.Module) -> torch.nn.Module:
    import torch

    class DiffusersDenoiser(torch.nn.Module):
        """forward(x float32 [B, C, H, W], t float32 [B][, class_labels]) -> UNet2DModel(x, t, class_labels).sample."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.unet = inner

        def forward(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
            # UNet2DModel embeds t with sinusoids in float32; a float timestep gives the
            # same embedding as the integer index, so no cast to int64 is needed.
            return self.unet(x, t, class_labels=cond[0] if cond else None, return_dict=False)[0]

    return DiffusersDenoiser(unet).eval()


def diffusers_source(path: Path, layout: str, flags: ScheduleFlags | None = None,
                     allow_pickle: bool = False, null_label: float | None = None) -> ModelSource:
    """A ModelSource from a diffusers pipeline or bare UNet folder (flags: for a bare UNet only;
    `null_label`: the class-conditional UNet's unconditional label, `--null-label`)."""
    path = Path(path).resolve()
    unet_dir = path / "unet" if layout == "pipeline" else path
    config, weights = read_unet_config(unet_dir, allow_pickle)
    size = config.get("sample_size", 32)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    shape = (int(config.get("in_channels", 3)), h, w)
    sched = path / "scheduler" / "scheduler_config.json"
    notes: list[str] = []
    if layout == "pipeline" and sched.is_file():
        spec, notes = spec_from_scheduler(_read_json(sched), shape, sched)
        if flags is not None:
            notes.append("schedule flags ignored: the pipeline's scheduler config defines the schedule")
    else:
        if flags is None:
            notes.append("no scheduler config and no schedule flags: assuming DDPM linear betas "
                         "1e-4..0.02, T=1000, epsilon (set --schedule etc. to change)")
            flags = ScheduleFlags()
        spec = flags.diffusion_spec(shape)
        if spec.sample_shape[0] != shape[0]:
            raise SourceError(f"--sample-shape {spec.sample_shape} does not match the UNet's in_channels {shape[0]}")
    conditioning = unet_conditioning(config, null_label, unet_dir / "config.json")
    if conditioning:
        spec = replace(spec, conditioning=conditioning)
        if null_label is None:
            notes.append(f"{conditioning[0].describe()}: diffusers records no null label, so classifier-free "
                         "guidance is off; export with --null-label N if the model learned one")
    files = {"unet_config": file_sha256(unet_dir / "config.json"), "weights": file_sha256(weights)}
    key = content_key({"kind": "diffusers", "spec": spec.to_dict(), **files})
    info = {"diffusers_class": UNET_CLASS, "unet_config": {k: v for k, v in config.items() if not k.startswith("_")}}
    return ModelSource(SourceKind.DIFFUSERS, str(path), spec, key,
                       load_module=lambda: _wrap(load_unet(unet_dir, allow_pickle)),
                       notes=tuple(notes), info=info)
