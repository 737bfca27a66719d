"""ModelSource: one resolved model, whatever form the user named it in.

A source says what the model is (kind + ref), how to sample it (its DiffusionSpec), what
identifies its content (a key made from file hashes, never from rebuilding the module),
and where its artifacts come from: a ready bundle, and/or a loader for the PyTorch
module. Turning a source into what a backend needs is the command layer's job
(`ddpm_rt.prepare`): backends never resolve or export.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddpm_rt.fsutil import json_key
from ddpm_rt.spec import DiffusionSpec

if TYPE_CHECKING:
    import torch


class SourceKind(str, enum.Enum):
    BUILTIN = "builtin"  # ref: a built-in name
    CHECKPOINT = "checkpoint"  # ref: absolute path of a `ddpm-rt train` directory
    DIFFUSERS = "diffusers"  # ref: absolute path of a pipeline or UNet2DModel folder
    MODULE = "module"  # ref: "package.module:factory"
    BUNDLE = "bundle"  # ref: absolute path of a bundle directory or .onnx


@dataclass(frozen=True)
class ModelSource:
    """A denoiser plus its diffusion contract and where its artifacts come from."""

    kind: SourceKind
    ref: str
    spec: DiffusionSpec
    content_key: str  # hex sha256 over the files (and settings) that define the model
    bundle: Path | None = None  # a ready bundle (its own, or a built-in's shipped one)
    load_module: Callable[[], torch.nn.Module] | None = field(default=None, compare=False, repr=False)
    untrained: bool = False  # a built-in without shipped weights (samples are noise)
    notes: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        """How the source is named in messages and reports, e.g. "builtin:digits"."""
        return f"{self.kind.value}:{self.ref}"

    @property
    def manifest_entry(self) -> dict[str, str]:
        """The bundle manifest's `source` field."""
        return {"kind": self.kind.value, "ref": self.ref}


def content_key(parts: dict[str, Any]) -> str:
    """sha256 of a JSON-able description (file hashes, spec, format versions)."""
    return json_key(parts, 64)
