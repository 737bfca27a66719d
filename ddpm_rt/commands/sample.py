"""`ddpm-rt sample`: run the reverse loop on a model and write a picture or the raw samples."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ddpm_rt.registry import BACKEND_NAMES


def sample(
    source: Annotated[
        str | None,
        typer.Argument(help="Built-in model name, bundle, `ddpm-rt train` checkpoint dir or diffusers folder. "
                       "Default: the shipped digits model."),
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Number of reverse steps (default: the model's own, e.g. 15 for unipc).")] = None,
    sampler: Annotated[str | None, typer.Option(help="VP models: unipc (default), dpmpp-2m, dpmpp-3m, ipndm, ddim, ddpm; interp: direct; alpha-power: geometric.")] = None,
    eta: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="DDIM eta: 0 deterministic, 1 DDPM-like.")] = None,
    spacing: Annotated[str | None, typer.Option(help="Timestep spacing: leading | trailing | linspace.")] = None,
    step_scale: Annotated[float | None, typer.Option(help="Geometric sampler step-size scaling (the model's default is measured best).")] = None,
    karras: Annotated[bool | None, typer.Option("--karras/--no-karras", help="dpmpp-2m/dpmpp-3m/unipc: Karras noise levels.")] = None,
    lower_order_final: Annotated[bool | None, typer.Option("--lower-order-final/--no-lower-order-final", help="Multistep solvers: lower order on the last steps of short runs (default on).")] = None,
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
    out: Annotated[Path, typer.Option(help="Output file: .png (grid or scatter) or .npy (raw [B, ...]); with --num, "
                                      "a directory of shards.")] = Path("samples.png"),
    num: Annotated[int | None, typer.Option(min=1, help="Sample this many into shard files under --out DIR (resumable: "
                                            "rerun the same command to finish or extend).")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="With --num: samples per shard file (a multiple of "
                                            "--micro-batch).")] = 1024,
    micro_batch: Annotated[int, typer.Option(min=1, help="With --num: samples per backend call; part of the run's "
                                             "identity, so the bytes do not depend on shards or workers.")] = 16,
    executor: Annotated[str, typer.Option(help="With --num: local (this process) or ray (a pool of Ray actors; "
                                          "pip install 'ddpm-rt[ray]').")] = "local",
    address: Annotated[str | None, typer.Option(help="With --executor ray: the cluster address (auto, or "
                                                "HEAD:6379); default: a local Ray instance.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="With --executor ray: actors (default: the cluster's "
                                                "CPUs / --threads).")] = None,
    gpus_per_worker: Annotated[float, typer.Option(min=0.0, help="With --executor ray: GPUs per actor.")] = 0.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Sample from a denoiser with a fixed-schedule reverse loop and write the result."""
    from ddpm_rt.machine import peak_rss_mb
    from ddpm_rt.output import check_memory, check_output_path, save_samples
    from ddpm_rt.precision import Precision
    from ddpm_rt.prepare import choose_backend, open_for
    from ddpm_rt.progress import Progress
    from ddpm_rt.runtime.backend import BackendOptions
    from ddpm_rt.runtime.loop import initial_noise
    from ddpm_rt.sources import resolve_source

    if precision is not None:
        precision = Precision.parse(precision).value
    if num is not None:
        _sample_shards(source, num, shard_size, micro_batch, executor, address, workers, gpus_per_worker,
                       out=out, steps=steps, seed=seed, backend=backend, threads=threads or 1,
                       precision=precision or "fp32", sampler=sampler, eta=eta, spacing=spacing, step_scale=step_scale)
        return
    check_output_path(out)  # before any model work: suffix, not a directory, writable parent
    src = resolve_source(source)
    for note in src.notes:
        typer.echo(f"warning: {note}", err=True)
    spec = src.spec
    chunk = min(batch, chunk or (64 if spec.is_image else 4096))
    check_memory(spec, batch, chunk, out)
    sampler_spec = spec.sampler(steps, sampler=sampler, eta=eta, spacing=spacing, step_scale=step_scale,
                                karras_sigmas=karras, lower_order_final=lower_order_final)
    plan = spec.plan(sampler_spec)
    choice = choose_backend(backend, src, log=lambda m: typer.echo(m, err=True), batch=chunk,
                            precision=precision, threads=threads, allow_inexact=allow_inexact)
    name = choice.name
    if backend == "auto":
        typer.echo(f"backend: auto chose {name} {choice.precision} ({choice.reason})", err=True)

    rng = np.random.default_rng(seed)
    x_init = initial_noise((batch, *spec.sample_shape), rng)
    samples = np.empty_like(x_init)
    options = BackendOptions(threads=threads, precision=choice.precision, cuda_graph=cuda_graph)
    t0 = time.perf_counter()
    with open_for(name, src, chunk, options, log=lambda m: typer.echo(m, err=True)) as be:
        t_open = time.perf_counter() - t0
        t1 = time.perf_counter()
        progress = Progress(f"sampling ({name})")
        for lo in range(0, batch, chunk):
            hi = min(batch, lo + chunk)
            part = be.sample(plan, x_init[lo:hi], rng=rng, allow_nonfinite=allow_nonfinite,
                             progress=lambda i, n, lo=lo, hi=hi: progress(lo * n + (hi - lo) * i, batch * n))
            samples[lo:hi] = part
        t_loop = time.perf_counter() - t1
    title = f"{src.label} · {sampler_spec.sampler} {plan.steps} steps · {name}"
    save_samples(samples, spec, out, title)
    summary = {
        "source": src.label,
        "untrained": src.untrained,
        "backend": name,
        "backend_reason": choice.reason,
        "precision": choice.precision,
        "sampler": sampler_spec.sampler,
        "steps": plan.steps,
        "eta": sampler_spec.eta,
        "batch": batch,
        "chunk": chunk,
        "seed": seed,
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
        typer.echo(
            f"wrote {out} ({batch} samples, {sampler_spec.sampler} {plan.steps} steps on {name}, "
            f"{choice.precision}, {t_loop:.2f}s{chunks}, peak memory {summary['peak_rss_mb']:.0f} MB)"
        )


def _sample_shards(source: str | None, num: int, shard_size: int, micro_batch: int, executor: str,
                   address: str | None, workers: int | None, gpus_per_worker: float, *, out: Path,
                   **job: object) -> None:
    """`sample --num N --out DIR`: sharded, resumable, in-process or on Ray (ddpm_rt.shards)."""
    from ddpm_rt.errors import ConfigError
    from ddpm_rt.progress import Progress
    from ddpm_rt.shards import LocalExecutor, prepare_job, run_shards

    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor must be one of local, ray, got {executor!r}")
    if out.suffix.lower() in (".png", ".npy"):
        raise ConfigError(f"--out {out} looks like a file; with --num give a directory for the shards")
    spec = prepare_job(source, num=num, shard_size=shard_size, micro_batch=micro_batch, **job)
    if executor == "ray":
        from ddpm_rt.shards.ray_executor import RayExecutor

        runner = RayExecutor(address=address, workers=workers, num_gpus=gpus_per_worker)
    else:
        runner = LocalExecutor()
    s = run_shards(spec, out, runner, progress=Progress(f"sampling {num} ({executor})"))
    typer.echo(f"{out}: {s.num} samples in {s.shards} shards; computed {len(s.computed)}, kept "
               f"{len(s.skipped)} ({s.samples_per_s:.1f} samples/s on {s.stats.workers} worker(s))")
