"""Training checkpoints as safetensors + JSON (never pickle), written atomically.

A checkpoint directory holds:

* ``model.safetensors``   — EMA weights, the ones used for sampling and export;
* ``train_state.safetensors`` — raw weights (``model.*``), optimizer tensors
  (``optim.<param index>.<name>``) and the torch RNG state (``rng.torch``), for resuming;
* ``config.json``         — builtin kind, model config, DiffusionSpec, step, loss summary, seed, command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddpm_rt.errors import SourceError
from ddpm_rt.spec import DiffusionSpec
from ddpm_rt.weights import load_weights

if TYPE_CHECKING:
    import torch

FORMAT = "ddpm-rt-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE, STATE_FILE, CONFIG_FILE = "model.safetensors", "train_state.safetensors", "config.json"


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten the optimizer state to ``optim.<param index>.<name>`` tensors."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for idx, st in opt.state_dict()["state"].items():
        for name, value in st.items():
            out[f"optim.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def read_config(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / CONFIG_FILE
    if not Path(ckpt).is_dir():
        raise SourceError(f"checkpoint directory {ckpt} does not exist")
    if not path.is_file():
        raise SourceError(f"{ckpt} is not a ddpm-rt checkpoint (no {CONFIG_FILE}); train one with `ddpm-rt train`")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise SourceError(f"{path} is not a ddpm-rt checkpoint config (format != {FORMAT!r})")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise SourceError(
            f"{path} has checkpoint format version {cfg.get('format_version')}, this ddpm-rt reads {FORMAT_VERSION}"
        )
    for key in ("kind", "model_config", "spec"):
        if key not in cfg:
            raise SourceError(f"{path} lacks the field {key!r}")
    return cfg


def checkpoint_spec(ckpt: Path, cfg: dict[str, Any]) -> DiffusionSpec:
    """The DiffusionSpec recorded in a checkpoint's config (SourceError naming the file if invalid)."""
    try:
        return DiffusionSpec.from_dict(cfg["spec"])
    except Exception as e:  # ConfigError and malformed values alike
        raise SourceError(f"{Path(ckpt) / CONFIG_FILE} has an invalid diffusion spec: {e}") from None


def load_checkpoint(ckpt: Path | str) -> tuple[torch.nn.Module, DiffusionSpec, dict[str, Any]]:
    """(module with the EMA weights in eval mode, its DiffusionSpec, the config.json dict)."""
    from ddpm_rt.models.catalog import get_builtin

    ckpt = Path(ckpt)
    cfg = read_config(ckpt)
    builtin = get_builtin(cfg["kind"])
    spec = checkpoint_spec(ckpt, cfg)
    try:
        module = builtin.build(cfg["model_config"])
    except TypeError as e:
        raise SourceError(f"{ckpt / CONFIG_FILE} has a model config that {cfg['kind']!r} does not accept: {e}") from None
    load_weights(module, ckpt / MODEL_FILE)
    return module.eval(), spec, cfg
