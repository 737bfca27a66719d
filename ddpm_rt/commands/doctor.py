"""`ddpm-rt doctor`: what is installed, and which backends can run here (and why not)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer


def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Report Python, torch/CUDA, ONNX Runtime, TensorRT and GPU, and the usable backends."""
    from ddpm_rt.doctor import collect, render

    report = collect()
    if json_out:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        typer.echo(render(report))
