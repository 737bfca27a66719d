"""`ddpm-rt build`: a TensorRT engine for a bundle, cached inside it (extra `[trt]`, GPU only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def build(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory from `ddpm-rt export` (or its .onnx).")],
    precision: Annotated[str, typer.Option(help="Engine compute precision: fp32 | fp16 | bf16 (I/O stays float32; "
                                           "norm/softmax/reduce layers stay fp32).")] = "fp32",
    min_batch: Annotated[int, typer.Option(help="Smallest batch the engine accepts.")] = 1,
    opt_batch: Annotated[int | None, typer.Option(help="Batch TensorRT tunes for (default: --max-batch).")] = None,
    max_batch: Annotated[int, typer.Option(help="Largest batch the engine accepts.")] = 16,
    opt_level: Annotated[int, typer.Option(help="TensorRT builder optimisation level 0..5 (higher: slower build, "
                                           "maybe faster engine).")] = 3,
    workspace_mib: Annotated[int | None, typer.Option(help="Builder workspace limit in MiB (default: TensorRT's).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Keep engines and the timing cache here instead of "
                                                   "<bundle>/engines and ~/.cache/ddpm-rt.")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when a valid engine is cached.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Build (or find cached) a TensorRT engine for a bundle, for a batch range and precision."""
    from ddpm_rt.errors import BundleError
    from ddpm_rt.gpu.availability import require_tensorrt
    from ddpm_rt.gpu.trt_build import BuildConfig, ensure_engine

    # arguments first, then the bundle path, then the machine: each error is the most useful one
    cfg = BuildConfig(
        precision=precision,
        min_batch=min_batch,
        opt_batch=max_batch if opt_batch is None else opt_batch,
        max_batch=max_batch,
        opt_level=opt_level,
        workspace_mib=workspace_mib,
    )
    if not bundle.exists():
        raise BundleError(f"bundle {bundle} not found; create one with `ddpm-rt export`")
    require_tensorrt()
    record = ensure_engine(bundle, cfg, cache_dir=cache_dir, force=force)
    summary = {
        "bundle": str(bundle),
        "engine": str(record.plan_path),
        "key": record.key,
        "built": record.built,
        **record.meta.to_dict(),
    }
    if json_out:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        what = "built" if record.built else "cached"
        typer.echo(
            f"{what} engine {record.plan_path} ({cfg.precision.value}, batch "
            f"{cfg.min_batch}..{cfg.opt_batch}..{cfg.max_batch}, {record.meta.gpu_name}, "
            f"TensorRT {record.meta.trt_version})"
        )
