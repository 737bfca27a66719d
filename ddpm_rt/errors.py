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
