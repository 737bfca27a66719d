"""The `ddpm-rt` command line. The only place that turns exceptions and signals into exit codes.

Each sub-command lives in `ddpm_rt/commands/<name>.py` as a plain typed function; this
module registers them and applies one policy:

    0    success (bare `ddpm-rt` and `--help` print help and exit 0)
    2    bad input: a usage error (click's usage text naming the option) or a `DdpmRtError`
         (one `error:` line naming the problem and the fix)
    3    the run worked but its result is unusable (non-finite samples; `NonFiniteError`)
    1    an unexpected failure (one line; DDPM_RT_DEBUG=1 shows the traceback)
    130  interrupted (SIGINT / Ctrl-C);  143  terminated (SIGTERM)

Interrupts are raised as `Interrupted`, a BaseException, so that no `except Exception`
swallows them while every `finally` and atomic write still cleans up; `train` catches it
to save a checkpoint first.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from types import FrameType

import typer

from ddpm_rt import __version__
from ddpm_rt.errors import DdpmRtError, Interrupted

# (command name, module under ddpm_rt.commands, function name)
COMMANDS: list[tuple[str, str, str]] = [
    ("sample", "sample", "sample"),
    ("train", "train", "train"),
    ("quality", "quality", "quality"),
    ("bench", "bench", "bench"),
    ("build", "build", "build"),
    ("doctor", "doctor", "doctor"),
    ("selfcheck", "selfcheck", "selfcheck"),
    ("export", "export", "export"),
    ("inspect", "inspect", "inspect"),
    ("export-sampler", "export_sampler", "export_sampler"),
    ("attach-classifier", "attach_classifier", "attach_classifier"),
    ("web", "web", "web"),
]
HELP_WIDTH = 120
# A missing optional package -> the extra that brings it (the command's own extra wins).
EXTRA_FOR_MODULE = {"torch": "torch", "onnx": "torch", "onnxscript": "torch", "safetensors": "torch",
                    "sklearn": "train", "matplotlib": "bench", "diffusers": "diffusers", "openvino": "openvino",
                    "ray": "ray", "tensorrt": "trt"}
EXTRA_FOR_COMMAND = {"train": "train", "quality": "quality", "bench": "bench"}  # option help is wrapped at this width, never cut, whatever the terminal reports


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ddpm-rt {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="ddpm-rt",
    help="Make trained diffusion denoisers fast and portable: train, export to ONNX, "
    "build TensorRT engines, sample and benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": HELP_WIDTH, "terminal_width": HELP_WIDTH},
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Make trained diffusion denoisers fast and portable."""


_REGISTERED: set[str] = set()


def _register(only: str | None = None) -> None:
    """Register the commands (just `only` when it names one: a run imports one command module)."""
    for name, module, func in COMMANDS:
        if (only is None or name == only) and name not in _REGISTERED:
            mod = importlib.import_module(f"ddpm_rt.commands.{module}")
            app.command(name)(getattr(mod, func))
            _REGISTERED.add(name)


def _invoked(argv: list[str]) -> str | None:
    """The sub-command named on the command line, if it is one of ours (else None: register all)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in {c[0] for c in COMMANDS} else None


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _install_signal_handlers() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupted)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    try:  # typer >= 0.2x vendors click; older typer uses click itself
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
    except ImportError:
        from click.exceptions import ClickException, NoArgsIsHelpError

    _install_signal_handlers()
    args = sys.argv[1:] if argv is None else argv
    _register(_invoked(args))
    try:
        code = app(args=args, standalone_mode=False)
    except Interrupted as e:
        name = signal.Signals(e.signum).name
        typer.echo(f"interrupted ({name}){': ' + e.note if e.note else ''}", err=True)
        sys.exit(128 + e.signum)
    except NoArgsIsHelpError as e:
        typer.echo(e.ctx.get_help() if e.ctx is not None else "")  # bare `ddpm-rt`: help on stdout, exit 0
        sys.exit(0)
    except ClickException as e:
        e.show()  # usage text + "Error: ..." naming the option
        sys.exit(e.exit_code)
    except DdpmRtError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    except (typer.Exit, SystemExit) as e:
        sys.exit(e.exit_code if isinstance(e, typer.Exit) else e.code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the one place that catches everything
        if os.environ.get("DDPM_RT_DEBUG"):
            raise
        top = (getattr(e, "name", None) or "").split(".")[0] if isinstance(e, ModuleNotFoundError) else ""
        if top in EXTRA_FOR_MODULE:  # an optional package the core install leaves out
            extra = EXTRA_FOR_COMMAND.get(_invoked(args) or "", EXTRA_FOR_MODULE[top])
            typer.echo(f"error: this needs the {top} package, which the core install leaves out: "
                       f"pip install 'ddpm-rt[{extra}]'", err=True)
            sys.exit(2)
        typer.echo(
            f"error: unexpected {type(e).__name__}: {e} (set DDPM_RT_DEBUG=1 for a traceback)", err=True
        )
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)  # typer returns the code of a typer.Exit raised inside a command


if __name__ == "__main__":
    main()
