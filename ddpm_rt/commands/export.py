"""`ddpm-rt export`: any trained denoiser to a self-describing, verified ONNX bundle."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ddpm_rt.schedule import KINDS


def export(
    source: Annotated[
        str | None,
        typer.Argument(help="Built-in name, `ddpm-rt train` checkpoint dir, diffusers pipeline or UNet2DModel folder. "
                       "Omit with --model."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Bundle directory to write (denoiser.onnx + ddpm_rt.json).")] = Path("bundle"),
    model: Annotated[str | None, typer.Option(help="Your own module: package.module:factory (called with no arguments).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights for --model: a .safetensors state dict.")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Also read pickle weights (.pt/.pth/.ckpt/.bin), via torch.load(weights_only=True).")] = False,
    schedule: Annotated[str | None, typer.Option(help=f"Training schedule: {', '.join(KINDS)} (default linear).")] = None,
    num_train_timesteps: Annotated[int | None, typer.Option(help="Training steps T (default 1000).")] = None,
    beta_start: Annotated[float | None, typer.Option(help="First beta (linear / scaled_linear; default 1e-4).")] = None,
    beta_end: Annotated[float | None, typer.Option(help="Last beta (default 0.02).")] = None,
    alpha: Annotated[float | None, typer.Option(help="alpha of an alpha_power schedule (default 0.99).")] = None,
    prediction_type: Annotated[str | None, typer.Option(help="epsilon | sample | v_prediction | next_sample (default epsilon).")] = None,
    sample_shape: Annotated[str | None, typer.Option(help="One sample's shape: C,H,W or D (needed with --model).")] = None,
    clip: Annotated[str | None, typer.Option(help="Clip of x0^ while sampling: LO,HI or R (= -R,R) or none.")] = None,
    conditioning: Annotated[str | None, typer.Option(
        help="--model only: its conditioning inputs after (x, t), as JSON, e.g. "
             "'[{\"name\": \"class_labels\", \"kind\": \"class\", \"num_classes\": 10, \"null\": 10}]'.")] = None,
    null_label: Annotated[float | None, typer.Option(
        help="Class-conditional diffusers UNet: the label it was trained with as 'no label' (enables "
             "classifier-free guidance; diffusers records none).")] = None,
    precision: Annotated[str, typer.Option(help="Graph precision: fp32 | fp16 | int8 (static QDQ, calibrated on the "
                                           "model's own sampling trajectories; I/O stays float32).")] = "fp32",
    opset: Annotated[int, typer.Option(help="ONNX opset (17..21).")] = 17,
    verify: Annotated[bool, typer.Option(help="Check the graph against eager PyTorch (--no-verify skips).")] = True,
    tolerance: Annotated[float | None, typer.Option(help="Max-abs single-call error allowed (default 1e-4 fp32, 5e-2 fp16).")] = None,
    trajectory_steps: Annotated[int, typer.Option(help="Steps of the trajectory comparison (0 skips it).")] = 50,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON on stdout.")] = False,
    feature_cache: Annotated[int | None, typer.Option(
        help="U-Nets: also write the feature-caching graphs (DeepCache) cut at this skip branch "
             "(0 = full resolution: the cheapest shallow graph); sample with --cache-interval.")] = None,
) -> None:
    """Export a denoiser to a verified ONNX bundle (denoiser.onnx + ddpm_rt.json)."""
    from ddpm_rt.exporter.export import ExportOptions, export_bundle, stderr_status
    from ddpm_rt.sources import resolve_export_source
    from ddpm_rt.sources.flags import ScheduleFlags

    given = {k: v for k, v in {
        "schedule": schedule, "num_train_timesteps": num_train_timesteps, "beta_start": beta_start,
        "beta_end": beta_end, "alpha": alpha, "prediction_type": prediction_type,
        "sample_shape": sample_shape, "clip": clip,
    }.items() if v is not None}
    cond_inputs = parse_conditioning_json(conditioning)
    if precision == "int8":
        if feature_cache is not None:
            from ddpm_rt.errors import ConfigError

            raise ConfigError("--feature-cache writes fp32 graphs; export them without --precision int8")
        _export_int8(source, out, model, weights, given, allow_pickle, opset, json_out, cond_inputs, null_label)
        return
    options = ExportOptions(precision=precision, opset=opset, verify=verify, tolerance=tolerance,
                            trajectory_steps=trajectory_steps, feature_cache=feature_cache)

    src = resolve_export_source(source, model=model, weights=weights,
                                flags=ScheduleFlags(**given) if given else None, allow_pickle=allow_pickle,
                                conditioning=cond_inputs, null_label=null_label)
    for note in src.notes:
        typer.echo(f"warning: {note}", err=True)
    manifest = export_bundle(src, out, options, status=stderr_status)
    if json_out:
        json.dump(manifest, sys.stdout)
        sys.stdout.write("\n")
        return
    parity = manifest["parity"]
    if parity is None:
        typer.echo(f"wrote {out} ({options.precision}, not verified)")
    else:
        traj = ", ".join(f"{k} trajectory max-abs {v['max_abs']:.3g}" for k, v in parity["trajectory"].items())
        typer.echo(f"wrote {out} ({options.precision}; max-abs {parity['max_abs']:.3g} vs eager"
                   f"{'; ' + traj if traj else ''})")


def parse_conditioning_json(text: str | None) -> tuple | None:
    """--conditioning JSON → CondInputs (None when not given); a one-line ConfigError otherwise."""
    if text is None:
        return None
    from ddpm_rt.conditioning import parse_conditioning
    from ddpm_rt.errors import ConfigError

    try:
        entries = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--conditioning is not valid JSON: {e}") from None
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("--conditioning must be a JSON list of objects like "
                          '{"name": "class_labels", "kind": "class", "num_classes": 10, "null": 10}')
    return parse_conditioning(entries)


def _export_int8(source: str | None, out: Path, model: str | None, weights: Path | None, given: dict,
                 allow_pickle: bool, opset: int, json_out: bool, conditioning: tuple | None = None,
                 null_label: float | None = None) -> None:
    """fp32 bundle into a temporary sibling, then its int8 QDQ variant into `out` (exporter.int8)."""
    import shutil
    import tempfile

    from ddpm_rt.exporter.export import ExportOptions, check_out_dir, export_bundle, stderr_status
    from ddpm_rt.exporter.int8 import quantize_bundle
    from ddpm_rt.sources import resolve_export_source
    from ddpm_rt.sources.flags import ScheduleFlags

    check_out_dir(out)
    src = resolve_export_source(source, model=model, weights=weights,
                                flags=ScheduleFlags(**given) if given else None, allow_pickle=allow_pickle,
                                conditioning=conditioning, null_label=null_label)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{__import__('os').getpid()}.fp32.", suffix=".tmp",
                                dir=out.parent))
    try:
        export_bundle(src, tmp / "fp32", ExportOptions(opset=opset, trajectory_steps=0), status=stderr_status)
        stderr_status("quantizing to int8 (calibrating on the model's own DDIM trajectories)")
        manifest = quantize_bundle(tmp / "fp32", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if json_out:
        json.dump(manifest, sys.stdout)
        sys.stdout.write("\n")
    else:
        typer.echo(f"wrote {out} (int8 QDQ; parent fp32 graph {manifest['parent']['onnx_sha256'][:12]}…; "
                   "check it with `ddpm-rt sample BUNDLE` and `ddpm-rt inspect BUNDLE`)")
