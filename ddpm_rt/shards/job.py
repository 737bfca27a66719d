"""ShardJob: everything that decides a run's bytes (and the per-worker knobs recorded beside them)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ddpm_rt.plan import SamplingPlan
from ddpm_rt.shards.layout import ShardLayout
from ddpm_rt.shards.noise import SEED_SCHEME, check_seed


def plan_description(plan: SamplingPlan) -> dict[str, Any]:
    """The sampler settings, step count and a hash of the coefficient table (what the loop reads)."""
    return {
        "sampler": asdict(plan.sampler),
        "steps": plan.steps,
        "clip": None if plan.clip is None else list(plan.clip),
        "table_sha256": hashlib.sha256(plan.table().tobytes()).hexdigest(),
        "hist_sha256": hashlib.sha256(plan.hist.tobytes()).hexdigest(),
    }


@dataclass(frozen=True)
class ShardJob:
    bundle_dir: Path
    source_key: str  # the bundle's content key (engine.bundle_content_key)
    plan: SamplingPlan
    sample_shape: tuple[int, ...]
    seed: int
    layout: ShardLayout
    backend: str = "ort"
    threads: int = 1  # backend threads per worker: fixed and recorded, results may depend on it
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_seed(self.seed)

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
        }))
