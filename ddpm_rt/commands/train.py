"""`ddpm-rt train KIND --out DIR`: train a built-in denoiser into a resumable checkpoint."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from ddpm_rt.errors import ConfigError


def train(
    kind: str = typer.Argument(
        ..., help="built-in model: digits | cond-digits | swissroll | interp-digits | vit-digits"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="checkpoint directory (resumed if it holds one)"),
    steps: int | None = typer.Option(None, help="total optimisation steps (default: the model's own)"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="batch size (default: the model's own)"),
    lr: float | None = typer.Option(None, help="peak Adam learning rate (default: the model's own)"),
    seed: int = typer.Option(0, help="seed for init, batches and noise"),
    label_dropout: float | None = typer.Option(
        None, "--label-dropout",
        help="conditional models: probability a training label is replaced by the null label (default: the model's own)"),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)"),
    json_out: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Train a built-in denoiser (EMA weights, safetensors checkpoints, resumable)."""
    import torch

    from ddpm_rt.models.catalog import get_builtin
    from ddpm_rt.train.trainer import TrainConfig
    from ddpm_rt.train.trainer import train as run_training

    builtin = get_builtin(kind)
    defaults = builtin.train_defaults
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    cfg = TrainConfig(
        steps=steps if steps is not None else defaults.get("steps", 2000),
        batch_size=batch_size if batch_size is not None else defaults.get("batch_size", 64),
        lr=lr if lr is not None else defaults.get("lr", 1e-3),
        seed=seed,
        label_dropout=label_dropout if label_dropout is not None else defaults.get("label_dropout", 0.0),
    )
    # the equivalent full command line, recorded in config.json (reproducible from it alone)
    command = (f"ddpm-rt train {kind} --out {shlex.quote(str(out))} --steps {cfg.steps} "
               f"--batch-size {cfg.batch_size} --lr {cfg.lr:g} --seed {seed}"
               + (f" --label-dropout {cfg.label_dropout:g}" if cfg.label_dropout else "")
               + (f" --threads {threads}" if threads is not None else ""))
    result = run_training(kind, out, cfg, progress=not json_out, command=command)
    summary = {
        "kind": kind,
        "out": str(out),
        "step": result.step,
        "resumed_from": result.start_step,
        "final_loss": result.final_loss,
        "wall_s": round(result.wall_s, 2),
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": seed,
    }
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.5f}"
        typer.echo(f"trained {kind} to step {result.step} (from {result.start_step}) in "
                   f"{result.wall_s:.1f}s, final loss {loss} → {out}")


if __name__ == "__main__":  # `python -m ddpm_rt.commands.train` until the CLI registers it
    typer.run(train)
