"""`ddpm-rt inspect`: what a bundle holds and how well it was verified."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def inspect(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory or a .onnx exported by ddpm-rt.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout (for scripts).")] = False,
) -> None:
    """Print a bundle's manifest summary, graph I/O, size, FLOPs and verification figures."""
    from ddpm_rt.bundle.inspect import describe, format_text
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.runtime.quality_guard import cached_verdicts

    verdicts = [v.summary() + (" — passed" if v.ok else " — REFUSED")
                for v in cached_verdicts(load_bundle(bundle))]
    info = describe(bundle, extra={"quality_guard": verdicts})
    if json_out:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        typer.echo(format_text(info))
