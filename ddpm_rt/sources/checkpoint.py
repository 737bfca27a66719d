"""`ddpm-rt train` checkpoint directories as sources (config read as JSON; torch only to load the module)."""

from __future__ import annotations

from pathlib import Path

from ddpm_rt.errors import SourceError
from ddpm_rt.fsutil import file_sha256
from ddpm_rt.sources.source import ModelSource, SourceKind, content_key
from ddpm_rt.train.checkpoint import CONFIG_FILE, MODEL_FILE, checkpoint_spec, read_config


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / MODEL_FILE).is_file()


def checkpoint_source(path: Path) -> ModelSource:
    path = Path(path).resolve()
    cfg = read_config(path)  # validates format and fields now: errors surface at resolve time
    spec = checkpoint_spec(path, cfg)
    if not (path / MODEL_FILE).is_file():
        raise SourceError(f"checkpoint {path} has no {MODEL_FILE}; train it with `ddpm-rt train`")
    key = content_key({"kind": "checkpoint", "spec": spec.to_dict(),
                       "weights": file_sha256(path / MODEL_FILE), "config": file_sha256(path / CONFIG_FILE)})

    def load_module():
        from ddpm_rt.train.checkpoint import load_checkpoint

        return load_checkpoint(path)[0]

    return ModelSource(SourceKind.CHECKPOINT, str(path), spec, key, load_module=load_module,
                       info={"config": cfg})
