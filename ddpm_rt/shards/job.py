"""ShardJob: everything that decides a run's bytes (and the per-worker knobs recorded beside them)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_rt.conditioning import CondInput
from ddpm_rt.editing import Edit
from ddpm_rt.plan import SamplingPlan
from ddpm_rt.shards.edit_inputs import ShardEdit
from ddpm_rt.shards.layout import ShardLayout
from ddpm_rt.shards.noise import SEED_SCHEME, check_seed


def plan_description(plan: SamplingPlan) -> dict[str, Any]:
    """The sampler settings, step count and a hash of the coefficient table (what the loop reads)."""
    return {
        "sampler": {k: v for k, v in asdict(plan.sampler).items()  # edit fields only when set: older
                    if k not in ("start", "repaint") or v not in (0, None)},  # directories stay valid
        "steps": plan.steps,
        "clip": None if plan.clip is None else list(plan.clip),
        "table_sha256": hashlib.sha256(plan.table().tobytes()).hexdigest(),
        "hist_sha256": hashlib.sha256(plan.hist.tobytes()).hexdigest(),
    }


@dataclass(frozen=True)
class ShardJob:
    bundle_dir: Path
    source_key: str  # the bundle's content key: the sha256 of its graph
    plan: SamplingPlan
    sample_shape: tuple[int, ...]
    seed: int
    layout: ShardLayout
    backend: str = "ort"
    threads: int = 1  # backend threads per worker: fixed and recorded, results may depend on it
    precision: str = "fp32"
    # conditional models: the conditioning of every sample i (arrays [num, ...]) and the guidance
    cond: dict[str, np.ndarray] | None = None
    guidance_scale: float = 1.0
    guidance_rescale: float = 0.0
    allow_nonfinite: bool = False
    plan_conditioning: tuple[CondInput, ...] = ()  # the model's conditioning inputs (spec order)
    edit: ShardEdit | None = None  # editing: sample i starts from / keeps image i (or one for all)

    def __post_init__(self) -> None:
        check_seed(self.seed)

    def cond_rows(self, first: int, size: int) -> dict[str, np.ndarray] | None:
        """The conditioning of samples first..first+size-1 (slots past `num` repeat the last sample's)."""
        if self.cond is None:
            return None
        idx = np.minimum(np.arange(first, first + size), self.layout.num - 1)
        return {k: v[idx] for k, v in self.cond.items()}

    def edit_rows(self, first: int, size: int) -> Edit | None:
        """The edit of samples first..first+size-1 (slots past `num` repeat the last sample's)."""
        return None if self.edit is None else self.edit.rows(first, size, self.layout.num)

    def identity(self) -> dict[str, Any]:
        """What a shard directory must agree on before shards may be added to it (JSON-normal form,
        so it compares equal to what a manifest read back holds)."""
        return json.loads(json.dumps({
            "source": {"onnx_sha256": self.source_key},
            "plan": plan_description(self.plan),
            "seed_scheme": {"scheme": SEED_SCHEME, "seed": self.seed},
            "micro_batch": self.layout.micro_batch,
            "shard_size": self.layout.shard_size,
            "sample_shape": list(self.sample_shape),
            "dtype": "float32",
            **({} if self.cond is None else {"conditioning": {
                "sha256": {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
                           for k, v in sorted(self.cond.items())},
                "guidance_scale": self.guidance_scale, "guidance_rescale": self.guidance_rescale}}),
            **({} if self.edit is None else {"edit": self.edit.identity()}),
        }))
