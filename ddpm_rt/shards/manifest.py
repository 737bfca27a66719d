"""The shard directory's manifest.json: the run's identity, its size and one record per shard."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ddpm_rt.errors import ConfigError

FORMAT = "ddpm-rt-shards"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"

# identity field -> how a mismatch is named in the refusal
_IDENTITY_NAMES = {
    "source": "another model (bundle content key)",
    "plan": "another sampling plan",
    "seed_scheme": "another seed or seed scheme",
    "micro_batch": "another --micro-batch",
    "shard_size": "another --shard-size",
    "sample_shape": "another sample shape",
    "dtype": "another dtype",
}
# present only in some runs (absent from older directories, which stay valid): compared when either has it
_OPTIONAL_IDENTITY_NAMES = {
    "conditioning": "other conditioning (labels or guidance)",
    "edit": "other editing inputs (--init / --mask content)",
}


@dataclass(frozen=True)
class ShardRecord:
    index: int
    start: int
    stop: int
    file: str
    sha256: str  # of the whole .npy file
    backend: str
    precision: str
    threads: int
    worker: str  # host:pid that computed it
    seconds: float  # wall time of the computation in the worker
    cpu_seconds: float = 0.0  # CPU time of the worker process meanwhile (all its threads)


@dataclass
class ShardManifest:
    identity: dict[str, Any]
    num: int
    shards: dict[int, ShardRecord] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **self.identity,
            "num": self.num,
            "shards": [asdict(self.shards[k]) for k in sorted(self.shards)],
        }, indent=1)

    @classmethod
    def from_json(cls, text: str, where: Path) -> ShardManifest:
        try:
            d = json.loads(text)
            if d.get("format") != FORMAT or d.get("format_version") != FORMAT_VERSION:
                raise ValueError("format")
            identity = {k: d[k] for k in _IDENTITY_NAMES}
            identity.update({k: d[k] for k in _OPTIONAL_IDENTITY_NAMES if k in d})
            records = [ShardRecord(**r) for r in d["shards"]]
            return cls(identity, int(d["num"]), {r.index: r for r in records})
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(
                f"{where} is not a version-{FORMAT_VERSION} ddpm-rt shard manifest; "
                "choose another --out directory"
            ) from None

    def check_compatible(self, identity: dict[str, Any], num: int, where: Path) -> None:
        """Refuse (one line) to add shards of a different run; `num` may only grow."""
        for key, what in {**_IDENTITY_NAMES, **_OPTIONAL_IDENTITY_NAMES}.items():
            if self.identity.get(key) != identity.get(key):
                raise ConfigError(
                    f"{where} holds samples of {what} ({key} differs); "
                    "rerun with the settings it was made with, or choose a new --out"
                )
        if num < self.num:
            raise ConfigError(
                f"{where} already holds a run of --num {self.num}; --num may only grow on a rerun "
                "(read the first samples you need, or choose a new --out)"
            )
