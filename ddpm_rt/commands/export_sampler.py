"""`ddpm-rt export-sampler`: the sampler inside the graph, for hosts without Python."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ddpm_rt.commands import options as opt
from ddpm_rt.errors import ConfigError


def export_sampler(
    bundle: Annotated[
        str,
        typer.Argument(help="Bundle from `ddpm-rt export` (directory or .onnx); a built-in name or "
                       "`ddpm-rt train` checkpoint is exported to a bundle first."),
    ],
    out: Annotated[Path, typer.Option(help="Output .onnx file (written atomically).")],
    sampler: opt.Sampler = None,
    steps: opt.Steps = None,
    eta: opt.Eta = None,
    spacing: opt.Spacing = None,
    step_scale: opt.StepScale = None,
    karras: opt.Karras = None,
    lower_order_final: opt.LowerOrderFinal = None,
    repaint_jump: opt.RepaintJump = None,
    repaint_resample: opt.RepaintResample = None,
    edit: Annotated[bool, typer.Option("--edit", help="Editing inputs: start (strength), image and mask (inpainting; "
                                       "RePaint with --repaint-*); a full-loop edit graph also takes the noise.")] = False,
    graph: Annotated[str, typer.Option(help="step: one step per Run (host loops, any sampler); loop: all steps "
                                       "in one Run via an ONNX Loop (deterministic samplers, or --edit); auto: "
                                       "loop when it can.")] = "auto",
    cache_interval: Annotated[int | None, typer.Option(min=1, help="Feature caching (a bundle exported with "
                                                   "--feature-cache): the full U-Net every N-th step, the shallow "
                                                   "graph in between, inside the full-loop graph.")] = None,
    cache_schedule: opt.CacheSchedule = "uniform",
    json_out: opt.JsonOut = False,
) -> None:
    """Fuse a bundle's denoiser and a sampler's update into one ONNX graph, verified against the Python loop.

    A conditional bundle gets a guided graph (its labels, guidance_scale and guidance_rescale as inputs)."""
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
    sampler_spec = opt.sampler_spec(b.spec, steps, sampler, eta, spacing, step_scale, karras, lower_order_final,
                                    repaint=(repaint_jump, repaint_resample))
    cache = None
    if cache_interval is not None:
        from ddpm_rt.exporter.sampler_graph import CacheGraphs

        g = b.feature_cache()
        cache = (CacheGraphs(load_denoiser(g.full), load_denoiser(g.shallow), g.feature_name, g.feature_shape),
                 cache_interval, cache_schedule)
    result = export_sampler_graph(load_denoiser(b.onnx_path), b.manifest, b.spec, sampler_spec, out, graph,
                                  edit=edit, cache=cache)
    typer.echo(
        f"wrote {result.graph} graph {out} and its description {result.summary()['sidecar']} ({sampler_spec.sampler}, {result.plan.steps} steps, "
        f"eta {sampler_spec.eta:g}); max |fused - Python loop| = {result.max_abs_diff:.2e} "
        f"(same kernels; {result.summary()['max_abs_diff_default_level']:.2e} at ORT's default level)",
        err=True,
    )
    if json_out:
        json.dump({"source": src.label, **result.summary()}, sys.stdout)
        sys.stdout.write("\n")
