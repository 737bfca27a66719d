"""`ddpm-rt bench`: eager PyTorch against every other backend on the same work, in one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ddpm_rt.errors import ConfigError
from ddpm_rt.runtime.backend import BACKEND_NAMES


def bench(
    source: Annotated[
        str | None,
        typer.Argument(help="Built-in model name, `ddpm-rt train` checkpoint dir, or bundle. Default: the shipped digits model."),
    ] = None,
    backends: Annotated[str | None, typer.Option(help=f"Comma-separated, from {', '.join(BACKEND_NAMES)}. Default: torch plus every usable backend.")] = None,
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4,16",
    steps: Annotated[int | None, typer.Option(help="Reverse steps (default: 50, or the model's own count).")] = None,
    sampler: Annotated[str | None, typer.Option(help="ddpm | ddim (VP models), direct, geometric.")] = None,
    eta: Annotated[float | None, typer.Option(help="DDIM eta.")] = None,
    spacing: Annotated[str | None, typer.Option(help="Timestep spacing: leading | trailing | linspace.")] = None,
    warmup: Annotated[int, typer.Option(help="Untimed full runs per backend and batch first.")] = 2,
    repeat: Annotated[int, typer.Option(help="Timed full runs per backend and batch (interleaved).")] = 5,
    threads: Annotated[int | None, typer.Option(help="CPU threads, the same for every backend (default: all usable cores).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initial and per-step noise (shared by all backends).")] = 0,
    diffusers_pipeline: Annotated[bool, typer.Option("--diffusers-pipeline", help="Also time diffusers' DDIMPipeline (eager) on the same UNet2DModel, batch 1.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the full result as JSON on stdout instead of the table.")] = False,
    json_file: Annotated[Path | None, typer.Option(help="Also write the JSON result to this file.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Also write a Markdown report to this file.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG: images/s vs batch, per-step latency bars.")] = None,
) -> None:
    """Time the reverse loop on eager PyTorch and each other backend: same bundle, plan, batches and noise."""
    from ddpm_rt.bench.report import markdown_report, text_report
    from ddpm_rt.bench.suites import BenchConfig, parse_list, run_suite
    from ddpm_rt.fsutil import atomic_write_text
    from ddpm_rt.runtime.backend import check_backend
    from ddpm_rt.sources import resolve_source

    if plot is not None and plot.suffix.lower() != ".png":
        raise ConfigError(f"--plot must end in .png, got {plot.name!r}")
    names = parse_list(backends, what="--backends") if backends else None
    config = BenchConfig(backends=names, batches=parse_list(batch, int, what="--batch"), warmup=warmup,
                         repeat=repeat, threads=threads, seed=seed)
    for name in names or ():
        if name != "auto":
            check_backend(name)  # unknown or unusable: say so before loading anything
    src = resolve_source(source)
    for note in src.notes:
        typer.echo(f"warning: {note}", err=True)
    sampler_spec = src.spec.sampler(steps, sampler=sampler, eta=eta, spacing=spacing)
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
