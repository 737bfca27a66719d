"""Model sources: one typed `ModelSource` for every form a user can name a model in."""

from ddpm_rt.sources.resolve import resolve_export_source, resolve_source
from ddpm_rt.sources.source import ModelSource, SourceKind

__all__ = ["ModelSource", "SourceKind", "resolve_export_source", "resolve_source"]
