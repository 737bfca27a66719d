"""`ddpm-rt sample`: run the reverse loop on a model and write a picture or the raw samples."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ddpm_rt.errors import ConfigError
from ddpm_rt.progress import Progress
from ddpm_rt.runtime.backend import BACKEND_NAMES


def sample(
    source: Annotated[
        str | None,
        typer.Argument(help="Built-in model name, `ddpm-rt train` checkpoint dir, or bundle. Default: the shipped digits model."),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Number of reverse steps (default: 50, or the model's own count).")] = None,
    sampler: Annotated[str | None, typer.Option(help="ddpm | ddim (VP models), direct (interp), geometric (alpha-power).")] = None,
    eta: Annotated[float | None, typer.Option(help="DDIM eta: 0 deterministic, 1 DDPM-like.")] = None,
    spacing: Annotated[str | None, typer.Option(help="Timestep spacing: leading | trailing | linspace.")] = None,
    step_scale: Annotated[float | None, typer.Option(help="Geometric sampler step-size scaling (seed 004 uses 1.5).")] = None,
    batch: Annotated[int, typer.Option(help="How many samples.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed for the initial and per-step noise.")] = 0,
    backend: Annotated[str, typer.Option(help=f"One of {', '.join(BACKEND_NAMES)}.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads for the backend.")] = None,
    precision: Annotated[str, typer.Option(help="GPU backends: fp32 | fp16 | bf16.")] = "fp32",
    cuda_graph: Annotated[bool, typer.Option(help="GPU backends: capture the whole loop in one CUDA graph.")] = True,
    out: Annotated[Path, typer.Option(help="Output file: .png (grid or scatter) or .npy (raw [B, ...]).")] = Path("samples.png"),
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Sample from a denoiser with a fixed-schedule reverse loop and write the result."""
    from ddpm_rt.output import check_output_path, save_samples
    from ddpm_rt.runtime.backend import BackendOptions, open_backend, resolve_backend_name
    from ddpm_rt.runtime.loop import initial_noise
    from ddpm_rt.source import resolve_source

    if precision not in ("fp32", "fp16", "bf16"):
        raise ConfigError(f"--precision must be fp32, fp16 or bf16, got {precision!r}")
    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}")
    check_output_path(out)
    src = resolve_source(source)
    for note in src.notes:
        typer.echo(f"warning: {note}", err=True)
    spec = src.spec
    sampler_spec = spec.sampler(steps, sampler=sampler, eta=eta, spacing=spacing, step_scale=step_scale)
    plan = spec.plan(sampler_spec)
    name = resolve_backend_name(backend)
    if backend == "auto":
        typer.echo(f"backend: auto chose {name}", err=True)

    rng = np.random.default_rng(seed)
    x_init = initial_noise((batch, *spec.sample_shape), rng)
    t0 = time.perf_counter()
    with open_backend(name, src, batch, BackendOptions(threads=threads, precision=precision, cuda_graph=cuda_graph)) as be:
        t_open = time.perf_counter() - t0
        t1 = time.perf_counter()
        samples = be.sample(plan, x_init, rng=rng, progress=Progress(f"sampling ({name})"))
        t_loop = time.perf_counter() - t1
    title = f"{src.name} · {sampler_spec.sampler} {plan.steps} steps · {name}"
    save_samples(samples, spec, out, title)
    summary = {
        "source": src.name,
        "untrained": src.untrained,
        "backend": name,
        "sampler": sampler_spec.sampler,
        "steps": plan.steps,
        "eta": sampler_spec.eta,
        "batch": batch,
        "seed": seed,
        "out": str(out),
        "open_s": round(t_open, 4),
        "sample_s": round(t_loop, 4),
        "finite": bool(np.all(np.isfinite(samples))),
    }
    if json_out:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        typer.echo(
            f"wrote {out} ({batch} samples, {sampler_spec.sampler} {plan.steps} steps on {name}, "
            f"{t_loop:.2f}s)"
        )
