"""Bundles: the graph contract, the manifest and loading — the only part of the export side the runtime reads."""

from ddpm_rt.bundle.load import Bundle, load_bundle

__all__ = ["Bundle", "load_bundle"]
