"""The `ddpm-rt` command line. The only place that turns exceptions into exit codes.

Each sub-command lives in `ddpm_rt/commands/<name>.py` as a plain typed function;
this module registers them and maps every `DdpmRtError` to one line on stderr
and exit code 2 (1 for unexpected failures, still one line unless DDPM_RT_DEBUG=1).
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from ddpm_rt.errors import DdpmRtError

app = typer.Typer(
    name="ddpm-rt",
    help="Make trained diffusion denoisers fast and portable: train, export to ONNX, "
    "build TensorRT engines, sample and benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (command name, module under ddpm_rt.commands, function name)
COMMANDS: list[tuple[str, str, str]] = [
    ("sample", "sample", "sample"),
    ("train", "train", "train"),
    ("quality", "quality", "quality"),
    # -- registered commands (one line each; keep this marker) --
    ("bench", "bench", "bench"),
    ("build", "build", "build"),
    ("doctor", "doctor", "doctor"),
    ("selfcheck", "selfcheck", "selfcheck"),
    ("export", "export", "export"),
    ("inspect", "inspect", "inspect"),
    ("export-sampler", "export_sampler", "export_sampler"),
]


def _register() -> None:
    for name, module, func in COMMANDS:
        mod = importlib.import_module(f"ddpm_rt.commands.{module}")
        app.command(name)(getattr(mod, func))


_register()


def main() -> None:
    """Console entry point."""
    try:
        app(standalone_mode=False)
    except DdpmRtError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:
        code = e.exit_code if isinstance(e, typer.Exit) else e.code
        sys.exit(code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the one place that catches everything
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if os.environ.get("DDPM_RT_DEBUG"):
            raise
        typer.echo(
            f"error: unexpected {type(e).__name__}: {e} (set DDPM_RT_DEBUG=1 for a traceback)", err=True
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
