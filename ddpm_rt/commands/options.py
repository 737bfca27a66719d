"""Options shared by several commands (sample, bench, export-sampler), written once.

Each alias is an ``Annotated`` type: a command declares ``steps: options.Steps = None`` and gets
the same flag, range check and help everywhere. The functions below turn parsed options into the
request objects the runtime takes (`SamplerSpec`, `Guidance`, `Edit`), with one-line errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from ddpm_rt.errors import ConfigError

if TYPE_CHECKING:
    from ddpm_rt.editing import Edit
    from ddpm_rt.plan import SamplerSpec
    from ddpm_rt.spec import DiffusionSpec

# -- the sampler ---------------------------------------------------------------------------------
Steps = Annotated[int | None, typer.Option(min=1, help="Number of reverse steps (default: the model's own, e.g. 15 for unipc).")]
Sampler = Annotated[str | None, typer.Option(help="VP models: unipc (default), dpmpp-2m, dpmpp-3m, ipndm, ddim, ddpm; interp: direct; alpha-power: geometric.")]
Eta = Annotated[float | None, typer.Option(min=0.0, max=1.0, help="DDIM eta: 0 deterministic, 1 DDPM-like.")]
Spacing = Annotated[str | None, typer.Option(help="Timestep spacing: leading | trailing | linspace.")]
StepScale = Annotated[float | None, typer.Option(help="Geometric sampler step-size scaling (the model's default is measured best).")]
Karras = Annotated[bool | None, typer.Option("--karras/--no-karras", help="dpmpp-2m/dpmpp-3m/unipc: Karras noise levels.")]
LowerOrderFinal = Annotated[bool | None, typer.Option("--lower-order-final/--no-lower-order-final", help="Multistep solvers: lower order on the last steps of short runs (default on).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]

# -- conditioning and guidance -------------------------------------------------------------------
ClassLabel = Annotated[int | None, typer.Option("--class", min=0, help="Conditional models: the class of every sample.")]
Classes = Annotated[str | None, typer.Option(help="Conditional models: comma-separated classes; the batch is split evenly, one PNG row per class (the default for a class-conditional model: every class).")]
LabelsFile = Annotated[Path | None, typer.Option("--labels", help="Conditional models: .npy of one label per sample (int) or one conditioning row per sample (float).")]
GuidanceScale = Annotated[float | None, typer.Option("--guidance", min=0.0, help="Classifier-free guidance scale w: out = u + w·(c − u); 1 = plain conditional, 0 = unconditional (default: the model's own).")]
GuidanceRescale = Annotated[float, typer.Option("--guidance-rescale", min=0.0, max=1.0, help="Guidance rescale φ (Lin et al. 2023): mixes in the output rescaled to the conditional half's std.")]
ClassifierScale = Annotated[float, typer.Option("--classifier-scale", min=0.0, help="Classifier guidance scale s, with the bundle's noise-aware classifier (0 = off).")]
CacheSchedule = Annotated[str, typer.Option(
    "--cache-schedule", help="Feature caching: which calls run the full U-Net: uniform (every N-th) or quadratic "
    "(as many, denser mid-run).")]
GuidanceMode = Annotated[str, typer.Option("--guidance-mode", help="How the two CFG halves run: auto (measured), batched (one call of 2B) or split (two calls of B).")]

# -- editing -------------------------------------------------------------------------------------
Init = Annotated[Path | None, typer.Option("--init", help="Start from this image (.png or .npy, the model's size; never resized): SDEdit with --strength, the known image with --mask. With --num: one image per sample, a directory (sorted names) or an .npy stack.")]
Strength = Annotated[float | None, typer.Option(min=0.0, max=1.0, help="With --init: how much of the schedule runs, diffusers' img2img strength in (0, 1] (default 1 with --mask, else 0.6).")]
Mask = Annotated[Path | None, typer.Option("--mask", help="Inpainting: binary mask (.png black/white or .npy 0/1) of the known region; see --mask-means. With --num: one for all, a directory or an .npy stack.")]
MaskMeans = Annotated[str, typer.Option("--mask-means", help="What 1 (white) in --mask marks: keep (diffusers' RePaint convention) or generate (Stable Diffusion inpainting's).")]
RepaintJump = Annotated[int | None, typer.Option("--repaint-jump", min=1, help="RePaint: jump length (steps re-noised in one jump); with --mask and --sampler ddim.")]
RepaintResample = Annotated[int | None, typer.Option("--repaint-resample", min=1, help="RePaint: resample count per jump point (jump_n_sample).")]

DEFAULT_STRENGTH = 0.6


def parse_list(text: str, cast: type = str, allowed: tuple[str, ...] | None = None,
               what: str = "list") -> tuple:
    """'torch, ort' -> ('torch', 'ort'); '1,4,16' -> (1, 4, 16) with cast=int (one-line ConfigError otherwise)."""
    try:
        items = tuple(cast(p.strip()) for p in text.split(",") if p.strip())
    except ValueError:
        raise ConfigError(f"{what}: cannot read {text!r} as a comma-separated list of {cast.__name__}") from None
    if not items:
        raise ConfigError(f"{what} needs at least one value")
    bad = [p for p in items if allowed is not None and p not in allowed]
    if bad:
        raise ConfigError(f"{what}: unknown {', '.join(map(str, bad))}; choose from {', '.join(allowed or ())}")
    return items


def sampler_spec(spec: DiffusionSpec, steps: int | None, sampler: str | None, eta: float | None = None,
                 spacing: str | None = None, step_scale: float | None = None, karras: bool | None = None,
                 lower_order_final: bool | None = None, *, strength: float | None = None,
                 repaint: tuple[int | None, int | None] = (None, None)) -> SamplerSpec:
    """The SamplerSpec the options ask for (the model's defaults for what is not given)."""
    from dataclasses import replace

    from ddpm_rt.editing import start_for_strength

    jump, resample = repaint
    if (jump is None) != (resample is None):
        raise ConfigError("RePaint needs both --repaint-jump and --repaint-resample")
    s = spec.sampler(steps, sampler=sampler, eta=eta, spacing=spacing, step_scale=step_scale,
                     karras_sigmas=karras, lower_order_final=lower_order_final)
    start = 0 if strength is None else start_for_strength(s.steps, strength)
    return replace(s, start=start, repaint=None if jump is None else (jump, resample))


def read_labels(path: Path) -> np.ndarray:
    if not path.is_file() or path.suffix.lower() != ".npy":
        raise ConfigError(f"--labels {path}: give an existing .npy file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--labels {path}: not a readable .npy file ({e})") from None


def conditioning_values(spec: DiffusionSpec, batch: int, class_label: int | None, classes: str | None,
                        labels: Path | None) -> tuple[dict[str, Any] | None, int, str, int | None]:
    """(conditioning by input name, the batch to sample, a note for the user, samples per PNG row when
    the batch is laid out one row per class) from the options.

    A class-conditional model given no label samples every class, one PNG row each; a model
    that learned an unconditional input and is given none samples unconditionally (and says so).
    """
    given = [n for n, v in (("--class", class_label), ("--classes", classes), ("--labels", labels)) if v is not None]
    if not spec.conditioning:
        if given:
            raise ConfigError(f"{given[0]} given, but this model is unconditional; drop it")
        return None, batch, "", None
    if len(given) > 1:
        raise ConfigError(f"give one of --class, --classes, --labels, not {' and '.join(given)}")
    if len(spec.conditioning) != 1:
        raise ConfigError("this model takes several conditioning inputs; the Python API "
                          "(Backend.sample(guidance=...)) takes them as arrays")
    cond = spec.conditioning[0]
    if labels is not None:
        values = read_labels(labels)
        if values.shape[0] != batch:
            raise ConfigError(f"--labels holds {values.shape[0]} entries for --batch {batch}; give one per sample")
        if cond.kind == "class":
            values = cond.check(values, batch, where=f"--labels {labels}")
        return {cond.name: values}, batch, "", None
    if cond.kind != "class":
        if class_label is not None or classes is not None:
            raise ConfigError(f"{cond.name} is a float tensor, not a class label; give --labels FILE.npy")
        cond.null_values(1)  # refuses (one line) a model that learned no unconditional input
        return ({cond.name: cond.null_values(batch)}, batch,
                f"no --labels: sampling {cond.name} unconditionally (its null value)", None)
    if class_label is not None:
        return {cond.name: cond.check(class_label, batch, where="--class")}, batch, "", None
    wanted = parse_list(classes, int, what="--classes") if classes else list(range(cond.num_classes))
    per_class = max(1, batch // len(wanted))
    note = ("" if classes else "class-conditional model: sampling every class, one row each (--class N for one); ")
    if per_class * len(wanted) != batch:
        note += f"--batch {batch} -> {per_class * len(wanted)} ({per_class} per class)"
    cond.check(np.asarray(wanted), len(wanted), where="--classes")
    return ({cond.name: np.repeat(np.asarray(wanted, np.int64), per_class)}, per_class * len(wanted),
            note.rstrip("; "), per_class)


def edit_request(spec: DiffusionSpec, batch: int, init: Path | None, mask: Path | None,
                 mask_means: str, strength: float | None = None) -> Edit | None:
    """The checked `Edit` the options ask for (None without --init)."""
    from ddpm_rt.editing import make_edit, read_array

    if init is None:
        if mask is not None:
            raise ConfigError("--mask needs --init IMAGE: the image whose known region it keeps")
        if strength is not None:
            raise ConfigError("--strength needs --init IMAGE: the image the run starts from")
        return None
    image = read_array(init, spec.sample_shape, spec.data_range, "image")
    m = None if mask is None else read_array(mask, spec.sample_shape, spec.data_range, "mask")
    return make_edit(spec.sample_shape, spec.data_range, batch, image, m, mask_means)
