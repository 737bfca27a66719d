"""Loading a state dict into a module with one clear error when names or shapes differ."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ddpm_rt.errors import SourceError

if TYPE_CHECKING:
    import torch


def load_state_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Load `state` into `module`; SourceError naming missing/unexpected/mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or extra or bad:
        parts = [f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", bad))
                 if keys]
        raise SourceError(f"weights in {where} do not match the module ({'; '.join(parts)})")
    module.load_state_dict(state)
