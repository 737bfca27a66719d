"""`ddpm-rt export-sampler`: the sampler inside the graph, for hosts without Python."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ddpm_rt.errors import ConfigError


def export_sampler(
    bundle: Annotated[
        str,
        typer.Argument(help="Bundle from `ddpm-rt export` (directory or .onnx); a built-in name or "
                       "`ddpm-rt train` checkpoint is exported to a bundle first."),
    ],
    out: Annotated[Path, typer.Option(help="Output .onnx file (written atomically).")],
    sampler: Annotated[str | None, typer.Option(help="VP models: unipc (default), dpmpp-2m, dpmpp-3m, ipndm, ddim, ddpm; interp: direct; alpha-power: geometric.")] = None,
    steps: Annotated[int | None, typer.Option(help="Number of reverse steps (default: the model's own, e.g. 15 for unipc).")] = None,
    eta: Annotated[float | None, typer.Option(help="DDIM eta: 0 deterministic (full-loop graph possible), > 0 stochastic.")] = None,
    spacing: Annotated[str | None, typer.Option(help="Timestep spacing: leading | trailing | linspace.")] = None,
    step_scale: Annotated[float | None, typer.Option(help="Geometric sampler step-size scaling.")] = None,
    karras: Annotated[bool | None, typer.Option("--karras/--no-karras", help="dpmpp-2m/dpmpp-3m/unipc: Karras noise levels.")] = None,
    lower_order_final: Annotated[bool | None, typer.Option("--lower-order-final/--no-lower-order-final", help="Multistep solvers: lower order on the last steps of short runs (default on).")] = None,
    graph: Annotated[str, typer.Option(help="step: one step per Run (host loops, any sampler); loop: all steps "
                                       "in one Run via an ONNX Loop (deterministic samplers); auto: loop when "
                                       "deterministic.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Fuse a bundle's denoiser and a sampler's update into one ONNX graph, verified against the Python loop."""
    from ddpm_rt.exporter.sampler_export import (
        export_sampler_graph,
        is_sampler_graph,
        load_denoiser,
    )
    from ddpm_rt.prepare import bundle_for
    from ddpm_rt.sources import resolve_source

    if out.suffix != ".onnx":
        raise ConfigError(f"--out must name an .onnx file, got {out}")
    if bundle.endswith(".onnx") and Path(bundle).is_file() and is_sampler_graph(Path(bundle)):
        raise ConfigError(f"{bundle} is already a sampler graph; give the bundle it was exported from")
    src = resolve_source(bundle)
    for note in src.notes:
        typer.echo(f"warning: {note}", err=True)
    b = bundle_for(src)
    sampler_spec = b.spec.sampler(steps, sampler=sampler, eta=eta, spacing=spacing, step_scale=step_scale,
                                  karras_sigmas=karras, lower_order_final=lower_order_final)
    result = export_sampler_graph(load_denoiser(b.onnx_path), b.manifest, b.spec, sampler_spec, out, graph)
    typer.echo(
        f"wrote {result.graph} graph {out} and its description {result.summary()['sidecar']} ({sampler_spec.sampler}, {result.plan.steps} steps, "
        f"eta {sampler_spec.eta:g}); max |fused - Python loop| = {result.max_abs_diff:.2e} "
        f"(same kernels; {result.summary()['max_abs_diff_default_level']:.2e} at ORT's default level)",
        err=True,
    )
    if json_out:
        json.dump({"source": src.label, **result.summary()}, sys.stdout)
        sys.stdout.write("\n")
