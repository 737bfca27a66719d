"""Typed errors. Each message names the problem and the fix; only cli.py turns them into exit codes."""

from __future__ import annotations


class DdpmRtError(Exception):
    """Base class: a user-facing error with a one-line message."""


class ConfigError(DdpmRtError, ValueError):
    """A bad argument or setting (unknown sampler, steps out of range, ...)."""


class SourceError(DdpmRtError):
    """A model source that cannot be read (missing path, unknown format, bad weights)."""


class BundleError(DdpmRtError):
    """A bundle that is missing, edited, of another format version or inconsistent."""


class ExportError(DdpmRtError):
    """Export failed, including a parity check above tolerance."""


class BackendUnavailable(DdpmRtError):
    """A backend whose runtime (onnxruntime-gpu, tensorrt, CUDA) is not installed or usable."""


class NonFiniteError(DdpmRtError):
    """Sampling produced NaN or inf (exit code 3: the inputs were fine, the result is not)."""

    exit_code = 3


class Interrupted(BaseException):  # noqa: N818 - a signal, not an error: no `except Exception` catches it
    """SIGINT or SIGTERM arrived; cli.py exits with 128 + signum after cleanup."""

    def __init__(self, signum: int, note: str = "") -> None:
        super().__init__(signum, note)
        self.signum = signum
        self.note = note


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
