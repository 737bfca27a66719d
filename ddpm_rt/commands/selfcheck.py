"""`ddpm-rt selfcheck`: the GPU self-check — engines, parity against eager, and a benchmark table.

Argument handling only; the harness is `ddpm_rt.bench.selfcheck`. Without CUDA or
tensorrt it fails with one line saying what is missing. Not run in this project's CI
(no GPU was available).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

CIFAR_NAME = "cifar10-unet"


def selfcheck(
    out: Annotated[Path, typer.Option(help="Directory for selfcheck.json and selfcheck.md.")] = Path("selfcheck"),
    models: Annotated[str | None, typer.Option(help=f"Comma list of built-in names and/or {CIFAR_NAME} "
                                               "(default: all built-ins + the CIFAR-10 U-Net).")] = None,
    steps: Annotated[int, typer.Option(help="Steps of the checked trajectory (interp models use their own T).")] = 50,
    batches: Annotated[str, typer.Option(help="Batch sizes to check and time.")] = "1,16",
    precisions: Annotated[str, typer.Option(help="TensorRT precisions to build and check.")] = "fp32,fp16",
    repeats: Annotated[int, typer.Option(help="Timed runs per path (after 2 warm-up runs).")] = 10,
    opt_level: Annotated[int, typer.Option(help="TensorRT builder optimisation level 0..5.")] = 3,
    cache_dir: Annotated[Path | None, typer.Option(help="Bundle / engine cache (default ~/.cache/ddpm-rt).")] = None,
) -> None:
    """GPU self-check: build engines, check parity against eager, write a benchmark table."""
    import json

    from ddpm_rt.bench.selfcheck import TOLERANCE, failures, render_markdown, run_selfcheck
    from ddpm_rt.commands.options import parse_list
    from ddpm_rt.errors import ConfigError, ExportError
    from ddpm_rt.fsutil import atomic_write_text
    from ddpm_rt.gpu.availability import require_tensorrt
    from ddpm_rt.models.catalog import BUILTIN

    names = list(parse_list(models, allowed=(*BUILTIN, CIFAR_NAME), what="--models")) if models \
        else [*BUILTIN, CIFAR_NAME]
    batch_list = sorted(set(parse_list(batches, int, what="--batches")))
    precision_list = list(parse_list(precisions, allowed=tuple(TOLERANCE), what="--precisions"))
    if steps < 1 or repeats < 1 or min(batch_list) < 1:
        raise ConfigError(f"--steps, --repeats and --batches must be >= 1, got {steps}, {repeats}, {batches}")
    require_tensorrt()  # one line when CUDA or tensorrt is missing

    def log(msg: str) -> None:
        typer.echo(f"selfcheck: {msg}", err=True)

    report = run_selfcheck(names, steps=steps, batches=batch_list, precisions=precision_list,
                           repeats=repeats, opt_level=opt_level, cache_dir=cache_dir, log=log)
    atomic_write_text(out / "selfcheck.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "selfcheck.md", render_markdown(report))
    failed = failures(report)
    if failed:
        raise ExportError(
            f"self-check parity failed for {len(failed)} path(s): {'; '.join(failed)} "
            f"(details in {out / 'selfcheck.md'})"
        )
    typer.echo(f"selfcheck passed: wrote {out / 'selfcheck.json'} and {out / 'selfcheck.md'}")
