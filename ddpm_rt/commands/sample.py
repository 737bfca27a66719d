"""`ddpm-rt sample`: run the reverse loop on a model and write a picture or the raw samples."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from ddpm_rt.commands import options as opt
from ddpm_rt.registry import BACKEND_NAMES

if TYPE_CHECKING:
    from ddpm_rt.sources import ModelSource
    from ddpm_rt.spec import DiffusionSpec


def sample(
    source: Annotated[
        str | None,
        typer.Argument(help="Built-in model name, bundle, `ddpm-rt train` checkpoint dir or diffusers folder. "
                       "Default: the shipped digits model."),
    ] = None,
    steps: opt.Steps = None,
    sampler: opt.Sampler = None,
    eta: opt.Eta = None,
    spacing: opt.Spacing = None,
    step_scale: opt.StepScale = None,
    karras: opt.Karras = None,
    lower_order_final: opt.LowerOrderFinal = None,
    class_label: opt.ClassLabel = None,
    classes: opt.Classes = None,
    labels: opt.LabelsFile = None,
    guidance: opt.GuidanceScale = None,
    guidance_rescale: opt.GuidanceRescale = 0.0,
    classifier_scale: opt.ClassifierScale = 0.0,
    guidance_mode: opt.GuidanceMode = "auto",
    init: opt.Init = None,
    strength: opt.Strength = None,
    mask: opt.Mask = None,
    mask_means: opt.MaskMeans = "keep",
    repaint_jump: opt.RepaintJump = None,
    repaint_resample: opt.RepaintResample = None,
    batch: Annotated[int, typer.Option(min=1, help="How many samples.")] = 64,
    chunk: Annotated[int | None, typer.Option(min=1, help="At most this many samples run at once; larger batches "
                                              "run in chunks, one after another, and the peak memory is reported "
                                              "(default: 64 images or 4096 vectors).")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Random seed for the initial and per-step noise.")] = 0,
    backend: Annotated[str, typer.Option(help=f"One of {', '.join(BACKEND_NAMES)}.")] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for the backend.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 | bf16 | fp16 | int8. Default: fp32, or with --backend "
                                                  "auto whatever passed the quality guard and measured fastest here.")] = None,
    allow_inexact: Annotated[bool, typer.Option(help="Run a reduced precision even if it fails the quality guard.")] = False,
    cuda_graph: Annotated[bool, typer.Option(help="GPU backends: capture the whole loop in one CUDA graph.")] = True,
    allow_nonfinite: Annotated[bool, typer.Option(help="Write the samples even if they contain NaN/inf.")] = False,
    out: Annotated[Path, typer.Option(help="Output file: .png (grid or scatter; with --init, input | mask | result) "
                                      "or .npy (raw [B, ...]); with --num, a directory of shards.")] = Path("samples.png"),
    num: Annotated[int | None, typer.Option(min=1, help="Sample this many into shard files under --out DIR (resumable: "
                                            "rerun the same command to finish or extend).")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="With --num: samples per shard file (a multiple of "
                                            "--micro-batch).")] = 1024,
    micro_batch: Annotated[int | None, typer.Option(min=1, help="With --num: samples per backend call (default: 16, or "
                                                    "the shard size if smaller); part of the run's identity, so the "
                                                    "bytes do not depend on shards or workers.")] = None,
    executor: Annotated[str, typer.Option(help="With --num: local (this process) or ray (a pool of Ray actors; "
                                          "pip install 'ddpm-rt[ray]').")] = "local",
    address: Annotated[str | None, typer.Option(help="With --executor ray: the cluster address (auto, or "
                                                "HEAD:6379); default: a local Ray instance.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="With --executor ray: actors (default: the cluster's "
                                                "CPUs / --threads).")] = None,
    gpus_per_worker: Annotated[float, typer.Option(min=0.0, help="With --executor ray: GPUs per actor.")] = 0.0,
    cache_interval: Annotated[str | None, typer.Option(
        help="U-Net feature caching (DeepCache; a bundle exported with --feature-cache): run the full U-Net "
             "every N-th call and only its shallow graph in between (N = 1: off); `auto` = the interval the "
             "bundle recommends. Changes the samples slightly; never on unless asked.")] = None,
    cache_schedule: opt.CacheSchedule = "uniform",
    json_out: opt.JsonOut = False,
) -> None:
    """Sample from a denoiser with a fixed-schedule reverse loop and write the result."""
    from ddpm_rt.errors import ConfigError
    from ddpm_rt.machine import peak_rss_mb
    from ddpm_rt.output import check_memory, check_output_path, save_samples
    from ddpm_rt.precision import Precision
    from ddpm_rt.progress import Progress
    from ddpm_rt.runtime.loop import initial_noise
    from ddpm_rt.sampling import open_run
    from ddpm_rt.sources import resolve_source

    if precision is not None:
        precision = Precision.parse(precision).value
    if num is not None:
        if (repaint_jump is None) != (repaint_resample is None):
            raise ConfigError("RePaint needs both --repaint-jump and --repaint-resample")
        if strength is None and init is not None and mask is None and repaint_jump is None:
            strength = opt.DEFAULT_STRENGTH  # as for one batch
        if classifier_scale:
            raise ConfigError("--classifier-scale guides one batch; sharded --num runs do not carry the "
                              "classifier yet (drop --num, or sample batches with --batch)")
        if cache_interval is not None:
            raise ConfigError("--cache-interval samples one batch so far; drop --num")
        _sample_shards(source, num, shard_size, micro_batch, executor, address, workers, gpus_per_worker,
                       out=out, steps=steps, seed=seed, backend=backend, threads=threads,
                       precision=precision, sampler=sampler, eta=eta, spacing=spacing, step_scale=step_scale,
                       karras_sigmas=karras, lower_order_final=lower_order_final, chunk=chunk,
                       allow_inexact=allow_inexact, allow_nonfinite=allow_nonfinite,
                       class_label=class_label, classes=classes, labels=labels, guidance=guidance,
                       guidance_rescale=guidance_rescale, json_out=json_out, init=init, mask=mask,
                       mask_means=mask_means, strength=strength,
                       repaint=None if repaint_jump is None else (repaint_jump, repaint_resample))
        return
    check_output_path(out)  # before any model work: suffix, not a directory, writable parent
    src = resolve_source(source)
    for note in src.notes:
        typer.echo(f"warning: {note}", err=True)
    spec = src.spec
    label_spec = _classifier_label_spec(src) if classifier_scale and not spec.conditioning else spec
    cond, batch, note, per_row = opt.conditioning_values(label_spec, batch, class_label, classes, labels)
    if note:
        typer.echo(note, err=True)
    edit = opt.edit_request(spec, batch, init, mask, mask_means, strength)
    if strength is None and init is not None and mask is None and repaint_jump is None:
        strength = opt.DEFAULT_STRENGTH  # SDEdit without a strength: diffusers' img2img default is 0.8; ours 0.6
    chunk = min(batch, chunk or (64 if spec.is_image else 4096))
    check_memory(spec, batch, chunk, out)
    sampler_spec = opt.sampler_spec(spec, steps, sampler, eta, spacing, step_scale, karras, lower_order_final,
                                    strength=strength, repaint=(repaint_jump, repaint_resample))
    interval = _cache_interval(cache_interval, src)

    def log(message: str) -> None:
        typer.echo(message, err=True)

    t0 = time.perf_counter()
    with open_run(src, backend, chunk=chunk, batch=batch, precision=precision, threads=threads,
                  allow_inexact=allow_inexact, cuda_graph=cuda_graph, cond=cond, guidance_scale=guidance,
                  guidance_rescale=guidance_rescale, classifier_scale=classifier_scale,
                  guidance_mode=guidance_mode, calls=spec.plan(sampler_spec).model_calls, log=log,
                  feature_cache=interval is not None) as run:
        if backend == "auto":
            log(f"backend: auto chose {run.name} {run.choice.precision} ({run.choice.reason})")
        t_open = time.perf_counter() - t0
        plan = run.spec.plan(sampler_spec)  # the artifact's own spec (a bundle carries it in its manifest)
        if interval is not None:
            from ddpm_rt.plan import with_feature_cache

            plan = with_feature_cache(plan, interval, cache_schedule)
        rng = np.random.default_rng(seed)
        x_init = initial_noise((batch, *run.spec.sample_shape), rng)
        t1 = time.perf_counter()
        samples = run.sample(plan, x_init, rng=rng, edit=edit, allow_nonfinite=allow_nonfinite,
                             progress=Progress(f"sampling ({run.name})"))
        t_loop = time.perf_counter() - t1
    title = f"{src.label} · {sampler_spec.sampler} {plan.steps} steps · {run.name}"
    panels = () if edit is None else (("input", edit.image),) + (
        () if edit.mask is None else (("mask", _mask_picture(edit.mask, run.spec.data_range)),))
    save_samples(samples, run.spec, out, title, cols=per_row, panels=panels)
    g = run.guidance
    summary = {
        "source": src.label,
        "untrained": src.untrained,
        "backend": run.name,
        "backend_reason": run.choice.reason,
        "precision": run.choice.precision,
        "sampler": sampler_spec.sampler,
        "steps": plan.steps,
        "model_calls": plan.model_calls,
        "cached_calls": plan.cached_calls,
        "cache": None if interval is None else {"interval": interval, "schedule": cache_schedule},
        "start": plan.start,
        "eta": sampler_spec.eta,
        "batch": batch,
        "chunk": chunk,
        "seed": seed,
        "guidance": None if g is None else {"scale": g.scale, "rescale": g.rescale, "mode": g.mode,
                                            "classifier_scale": g.classifier_scale, **run.notes},
        "edit": None if edit is None else {"strength": strength, "mask": edit.mask is not None,
                                           "repaint": sampler_spec.repaint},
        "out": str(out),
        "open_s": round(t_open, 4),
        "sample_s": round(t_loop, 4),
        "peak_rss_mb": peak_rss_mb(),
        "finite": bool(np.all(np.isfinite(samples))),
    }
    if json_out:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        chunks = f", {-(-batch // chunk)} chunks of <= {chunk}" if batch > chunk else ""
        guided = "" if g is None else f", guidance {g.scale:g} ({g.mode if g.doubled else 'one call per step'})" + (
            f", classifier scale {g.classifier_scale:g}" if g.classifier_scale else "")
        typer.echo(
            f"wrote {out} ({batch} samples, {sampler_spec.sampler} {plan.steps} steps on {run.name}, "
            f"{run.choice.precision}{guided}, {t_loop:.2f}s{chunks}, peak memory {summary['peak_rss_mb']:.0f} MB)"
        )


def _cache_interval(value: str | None, src: object) -> int | None:
    """--cache-interval: None (off), N >= 1, or `auto` = the bundle's measured recommendation."""
    from ddpm_rt.errors import ConfigError

    if value is None:
        return None
    from ddpm_rt.bundle.load import load_bundle

    path = getattr(src, "bundle", None)
    graphs = load_bundle(path).feature_cache() if path is not None else None  # refused here, before any timing
    if value == "auto":
        if graphs is None:
            raise ConfigError("--cache-interval auto reads the bundle's recommendation; sample a bundle exported "
                              "with --feature-cache, or give --cache-interval N")
        recommended = graphs.recommended_interval
        if recommended is None:
            raise ConfigError(f"{path} records no recommended cache interval; give --cache-interval N (2..5)")
        return int(recommended)
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"--cache-interval must be an integer >= 1 or auto, got {value!r}") from None
    if n < 1:
        raise ConfigError(f"--cache-interval must be >= 1, got {n}")
    return n


def _mask_picture(mask: np.ndarray, data_range: tuple[float, float]) -> np.ndarray:
    """The known region in the data range: white where known, black where generated."""
    lo, hi = data_range
    return np.where(mask, np.float32(hi), np.float32(lo))


def _sample_shards(source: str | None, num: int, shard_size: int, micro_batch: int | None, executor: str,
                   address: str | None, workers: int | None, gpus_per_worker: float, *, out: Path,
                   chunk: int | None, json_out: bool, class_label: int | None, classes: str | None,
                   labels: Path | None, guidance: float | None, **job: object) -> None:
    """`sample --num N --out DIR`: sharded, resumable, in-process or on Ray (ddpm_rt.shards); with
    --init, sample i edits image i of a directory or an .npy stack (or one image for all)."""
    from ddpm_rt.errors import ConfigError
    from ddpm_rt.progress import Progress
    from ddpm_rt.shards import LocalExecutor, prepare_job, run_shards
    from ddpm_rt.sources import resolve_source

    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor must be one of local, ray, got {executor!r}")
    if out.suffix.lower() in (".png", ".npy"):
        raise ConfigError(f"--out {out} looks like a file; with --num give a directory for the shards")
    if chunk is not None:
        raise ConfigError("--chunk splits one batch; with --num the unit of work is --micro-batch: use that")
    if classes is not None:
        raise ConfigError("--classes lays out one PNG batch; with --num give --class N or --labels FILE.npy "
                          "(one label per sample)")
    cond, _, _, _ = opt.conditioning_values(resolve_source(source).spec, num, class_label, None, labels)
    spec = prepare_job(source, num=num, shard_size=shard_size, micro_batch=micro_batch, cond=cond,
                       guidance_scale=guidance, log=lambda m: typer.echo(m, err=True), **job)
    if executor == "ray":
        from ddpm_rt.shards.ray_executor import RayExecutor

        runner = RayExecutor(address=address, workers=workers, num_gpus=gpus_per_worker)
    else:
        runner = LocalExecutor()
    s = run_shards(spec, out, runner, progress=Progress(f"sampling {num} ({executor})"))
    summary = {"out": str(out), "num": s.num, "shards": s.shards, "computed": len(s.computed),
               "kept": len(s.skipped), "samples_per_s": round(s.samples_per_s, 3), "workers": s.stats.workers,
               "backend": spec.backend, "precision": spec.precision, "micro_batch": spec.layout.micro_batch,
               "sampler": spec.plan.sampler.sampler, "steps": spec.plan.steps, "start": spec.plan.start,
               "edit": None if spec.edit is None else {"images": spec.edit.image.shape[0],
                                                       "mask": spec.edit.mask is not None}}
    if json_out:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        typer.echo(f"{out}: {s.num} samples in {s.shards} shards; computed {len(s.computed)}, kept "
                   f"{len(s.skipped)} ({s.samples_per_s:.1f} samples/s on {s.stats.workers} worker(s), "
                   f"{spec.backend} {spec.precision})")


def _classifier_label_spec(src: ModelSource) -> DiffusionSpec:
    """An unconditional model's spec with its bundle's classifier labels, to read --class/--classes/--labels
    (classifier guidance: the labels go to the classifier only)."""
    from dataclasses import replace

    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.errors import ConfigError
    from ddpm_rt.runtime.classifier import CLASSIFIER_SECTION, classifier_labels

    bundle = load_bundle(src.bundle) if src.bundle is not None else None
    if bundle is None or not bundle.manifest.get(CLASSIFIER_SECTION):
        raise ConfigError(f"{src.label} carries no classifier for --classifier-scale; attach one with "
                          "`ddpm-rt attach-classifier BUNDLE`, or drop --classifier-scale")
    return replace(src.spec, conditioning=(classifier_labels(bundle),))
