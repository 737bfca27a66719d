"""`ddpm-rt bench`: eager PyTorch against every other backend on the same work, in one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ddpm_rt.commands import options as opt
from ddpm_rt.errors import ConfigError
from ddpm_rt.registry import BACKEND_NAMES


def bench(
    source: Annotated[
        str | None,
        typer.Argument(help="Built-in model name, `ddpm-rt train` checkpoint dir, or bundle. Default: the shipped digits model."),
    ] = None,
    backends: Annotated[str | None, typer.Option(help=f"Comma-separated, from {', '.join(BACKEND_NAMES)}. Default: torch plus every usable backend.")] = None,
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4,16",
    steps: opt.Steps = None,
    sampler: opt.Sampler = None,
    eta: opt.Eta = None,
    spacing: opt.Spacing = None,
    karras: opt.Karras = None,
    lower_order_final: opt.LowerOrderFinal = None,
    class_label: opt.ClassLabel = None,
    guidance: opt.GuidanceScale = None,
    warmup: Annotated[int, typer.Option(help="Untimed full runs per backend and batch first.")] = 2,
    repeat: Annotated[int, typer.Option(help="Timed full runs per backend and batch (interleaved).")] = 5,
    threads: Annotated[int | None, typer.Option(help="CPU threads, the same for every backend (default: all usable cores).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initial and per-step noise (shared by all backends).")] = 0,
    diffusers_pipeline: Annotated[bool, typer.Option("--diffusers-pipeline", help="Also time diffusers' DDIMPipeline (eager) on the same UNet2DModel, batch 1.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the full result as JSON on stdout instead of the table.")] = False,
    json_file: Annotated[Path | None, typer.Option(help="Also write the JSON result to this file.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Also write a Markdown report to this file.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG: images/s vs batch, per-step latency bars "
                                              "(with --quality: quality vs wall time).")] = None,
    quality: Annotated[bool, typer.Option("--quality", help="Time to quality instead: sweep sampler × steps on a "
                                          "built-in model, score each with the model's metric on a fixed seed.")] = False,
    samplers: Annotated[str | None, typer.Option(help="With --quality: comma-separated samplers (default: all for "
                                                 "the model).")] = None,
    steps_list: Annotated[str, typer.Option("--steps-list", help="With --quality: step counts to sweep.")] = "5,8,10,15,20,30,50",
    n: Annotated[int, typer.Option(min=2, help="With --quality: samples scored per cell.")] = 1000,
) -> None:
    """Time the reverse loop on eager PyTorch and each other backend: same bundle, plan, batches and noise."""
    from ddpm_rt.bench.report import markdown_report, text_report
    from ddpm_rt.bench.suites import BenchConfig, run_suite
    from ddpm_rt.commands.options import parse_list
    from ddpm_rt.fsutil import atomic_write_text
    from ddpm_rt.registry import check_backend
    from ddpm_rt.sources import resolve_source

    if plot is not None and plot.suffix.lower() != ".png":
        raise ConfigError(f"--plot must end in .png, got {plot.name!r}")
    if quality:
        _quality(source, samplers, steps_list, n, threads, seed, spacing, json_out, json_file, markdown, plot)
        return
    names = parse_list(backends, what="--backends") if backends else None
    config = BenchConfig(backends=names, batches=parse_list(batch, int, what="--batch"), warmup=warmup,
                         repeat=repeat, threads=threads, seed=seed, class_label=class_label, guidance=guidance)
    for name in names or ():
        if name != "auto":
            check_backend(name)  # unknown or unusable: say so before loading anything
    src = resolve_source(source)
    for note in src.notes:
        typer.echo(f"warning: {note}", err=True)
    sampler_spec = opt.sampler_spec(src.spec, steps, sampler, eta, spacing, None, karras, lower_order_final)
    plan = src.spec.plan(sampler_spec)

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    result = run_suite(src, plan, config, log=log if not json_out else None)
    if diffusers_pipeline:
        from ddpm_rt.bench.pipeline import run_pipeline_suite

        ours = tuple(n for n in result["config"]["backends"] if n in ("torch", "ort"))
        result["pipeline"] = run_pipeline_suite(
            src, plan, BenchConfig(backends=ours, batches=(1,), warmup=warmup, repeat=repeat,
                                   threads=result["config"]["threads"], seed=seed),
            backends=ours, log=log if not json_out else None)
        from ddpm_rt.bench.machine import environment

        result["environment"]["diffusers"] = environment(None)["diffusers"]
    text = json.dumps(result, indent=2, default=str)
    if json_file is not None:
        atomic_write_text(json_file, text + "\n")
    if markdown is not None:
        atomic_write_text(markdown, markdown_report(result, f"ddpm-rt bench: {src.label}"))
    if plot is not None:
        from ddpm_rt.bench.plot import plot as write_plot

        write_plot(result, plot)
    if json_out:
        sys.stdout.write(text + "\n")
    else:
        typer.echo(text_report(result))


def _quality(source: str | None, samplers: str | None, steps_list: str, n: int, threads: int | None, seed: int,
             spacing: str | None, json_out: bool, json_file: Path | None, markdown: Path | None,
             plot: Path | None) -> None:
    """`bench --quality`: the time-to-quality sweep (ddpm_rt.bench.quality_sweep)."""
    from ddpm_rt.bench.quality_sweep import (
        SAMPLERS,
        SweepConfig,
        quality_sweep,
        retime,
        to_markdown,
    )
    from ddpm_rt.bench.quality_sweep import plot as plot_sweep
    from ddpm_rt.commands.options import parse_list
    from ddpm_rt.fsutil import atomic_write_text
    from ddpm_rt.models.catalog import BUILTIN, DEFAULT_MODEL

    model = source or DEFAULT_MODEL
    if model not in BUILTIN:
        raise ConfigError(f"--quality needs a built-in model (its metric and held-out data ship with the "
                          f"package): one of {', '.join(BUILTIN)}")
    config = SweepConfig(samplers=parse_list(samplers, allowed=SAMPLERS, what="--samplers") if samplers else SAMPLERS,
                         steps=parse_list(steps_list, int, what="--steps-list"), n=n, seed=seed,
                         threads=threads or 1, spacing=spacing)

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    result = retime(quality_sweep(model, config, log=log if not json_out else (lambda _m: None)))
    text = json.dumps(result, indent=2, default=str)
    if json_file is not None:
        atomic_write_text(json_file, text + "\n")
    if markdown is not None:
        atomic_write_text(markdown, to_markdown(result))
    if plot is not None:
        plot_sweep(result, plot)
    sys.stdout.write(text + "\n" if json_out else to_markdown(result))
